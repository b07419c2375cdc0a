"""Reading the experts: the paper's prompts, the stratified fidelity sample, the random baseline, the local judge's
probabilities, describer parsing, the answer cache, and `smoe interpret` end to end on a tiny checkpoint."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_smoe import encode_pair
from hf_smoe.bench import bench_judge
from hf_smoe.cli.main import main
from hf_smoe.data import split_pairs
from hf_smoe.hub.card import EXPERTS_END, EXPERTS_START, write_expert_table
from hf_smoe.interpret.describe import distinct_prompts, interpret_experts
from hf_smoe.interpret.fidelity import fidelity_sample
from hf_smoe.interpret.generators.base import Judgment, TextGenerator
from hf_smoe.interpret.generators.cache import CachedGenerator
from hf_smoe.interpret.generators.local import LocalGenerator, as_chat
from hf_smoe.interpret.judge_checks import judge_agreement
from hf_smoe.interpret.prompts import DESCRIBER_PROMPT, JUDGE_PROMPT, describer_prompt, parse_description
from hf_smoe.testing import save_tiny_causal_lm

PAPER = Path(__file__).resolve().parents[2] / "shared" / "papers" / "sparse-moe-reward-models.txt"


def words(text: str) -> str:
    return " ".join(text.split())


def paper_prompt(title: str, last_line: str) -> str:
    """A figure's prompt as the paper prints it: from after its 'Prompt: <title>' caption to its last line."""
    text = PAPER.read_text(encoding="utf-8")
    start = text.index(f"Prompt: {title}") + len(f"Prompt: {title}")
    return words(text[start:text.index(last_line, start) + len(last_line)])


def test_describer_and_judge_prompts_are_the_papers_text_word_for_word():
    assert words(DESCRIBER_PROMPT) == paper_prompt(
        "Describing experts in natural language given top-activating examples", 'Your response is:-"')
    assert words(JUDGE_PROMPT) == paper_prompt("Judging whether an example matches expert description", "Answer:")
    filled = describer_prompt(["first prompt", "second prompt"])
    assert "Prompt 1:\nfirst prompt\n\nPrompt 2:\nsecond prompt" in filled and "{examples}" not in filled


def test_fidelity_sample_draws_100_from_the_top_decile_and_100_from_the_rest():
    weights = torch.rand(2000, generator=torch.Generator().manual_seed(3))
    top = set(torch.sort(weights, descending=True).indices[:200].tolist())  # ceil(10% of 2000)
    rows, from_top = fidelity_sample(weights, torch.Generator().manual_seed(0))
    rows = rows.tolist()
    assert len(rows) == 200 == len(set(rows)) and from_top.sum() == 100
    assert all((row in top) == flag for row, flag in zip(rows, from_top.tolist()))
    assert sum(row in top for row in rows) == 100
    # a small set is taken whole: 30 prompts -> the top 3 and the other 27
    rows, from_top = fidelity_sample(weights[:30], torch.Generator().manual_seed(0))
    assert sorted(rows.tolist()) == list(range(30)) and from_top.sum() == 3


class Scripted(TextGenerator):
    """A stand-in generator for bookkeeping tests: describes by echoing the first example, judges YES when the
    description occurs in the example, and records every call."""

    identity = "scripted"

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = [], fail_after

    def _record(self, prompts):
        if self.fail_after is not None and len(self.calls) + len(prompts) > self.fail_after:
            raise KeyboardInterrupt
        self.calls += list(prompts)

    def generate(self, prompts, max_new_tokens=64):
        self._record(prompts)
        return [re.search(r"Prompt 1:\n(.*)", prompt).group(1) + '"' for prompt in prompts]

    def judge(self, prompts):
        self._record(prompts)
        answers = []
        for prompt in prompts:
            description = prompt.split("Feature description:\n")[1].split("\nInput text:")[0]
            text = prompt.split("Input text:\n")[1].split("\nDecision rule:")[0]
            answers.append(Judgment(description.split()[0] in text, None, "YES"))
        return answers


def pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def test_random_baseline_shuffles_the_examples_and_keeps_the_router():
    generator = torch.Generator().manual_seed(0)
    describe_texts = [f"topic{i % 4} prompt{i}" for i in range(60)]
    measure_texts = [f"topic{i % 4} prompt{i}" for i in range(60, 300)]
    describe_routing = torch.softmax(3 * torch.randn(60, 4, generator=generator), dim=1)
    measure_routing = torch.softmax(3 * torch.randn(240, 4, generator=generator), dim=1)
    scripted = Scripted()
    result = interpret_experts(scripted, scripted, describe_routing, describe_texts, measure_routing, measure_texts,
                               seed=5, top_n=5, per_stratum=20)
    permutation = torch.randperm(60, generator=torch.Generator().manual_seed(5)).tolist()
    top = torch.sort(describe_routing, dim=0, descending=True, stable=True).indices[:5].T.tolist()
    for k in range(4):
        own, baseline = result["experts"][k], result["random_baseline"]["experts"][k]
        assert own["top_examples"] == [describe_texts[i] for i in top[k]]
        # the same top slots of the fixed router, filled with the shuffled texts
        assert baseline["top_examples"] == [describe_texts[permutation[i]] for i in top[k]]
        assert own["description"] == describe_texts[top[k][0]]
        for scored in (own, baseline):  # both judged against the unchanged routing weights of the same sample
            assert scored["sample"] == own["sample"]
            assert scored["description_fidelity"] == pytest.approx(
                pearson(scored["judgments"], measure_routing[scored["sample"], k]), abs=1e-6)
    assert result["description_fidelity"] == pytest.approx(np.mean([e["description_fidelity"]
                                                                    for e in result["experts"]]))
    assert result["notes"] == []  # 240 measuring prompts: the top 24 hold the 20 asked for, the rest 216


def test_small_sets_use_what_they_have_and_say_so():
    scripted = Scripted()
    routing = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    texts = [f"t{i}" for i in range(12)]
    result = interpret_experts(scripted, scripted, routing, texts, routing, texts, random_baseline=False)
    assert all(len(e["top_examples"]) == 12 and len(e["sample"]) == 12 for e in result["experts"])
    assert len(result["notes"]) == 2 and "only 12 distinct describing prompts" in result["notes"][0]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def test_local_judge_probabilities_equal_a_hand_computation(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    prompts = [JUDGE_PROMPT.format(description="asks about a cat", input_text=text)
               for text in ("what is a cat ?", "code a poem", "why is the sun good ?", "hello", "a dog ?")]
    judgments = LocalGenerator(tiny_lm, dtype=torch.float32, batch_size=3).judge(prompts)
    answers = ("YES", "Yes", "yes"), ("NO", "No", "no")  # the single-token forms this vocabulary has
    for prompt, judgment in zip(prompts, judgments):
        ids = tokenizer(as_chat(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probabilities = torch.softmax(model(ids).logits[0, -1].double(), dim=-1)
        yes, no = (sum(probabilities[tokenizer.convert_tokens_to_ids(form)] for form in forms) for forms in answers)
        assert judgment.probability == pytest.approx((yes / (yes + no)).item(), abs=1e-5)
        assert judgment.answer == (yes > no)


def test_local_generation_is_greedy_and_batched_like_plain_transformers(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    prompts = ["hello how are you today ?", "code a poem", "what is the answer to the question of the cat ?"]
    texts = LocalGenerator(tiny_lm, dtype=torch.float32, batch_size=2).generate(prompts, max_new_tokens=6)
    for prompt, text in zip(prompts, texts):
        ids = tokenizer(as_chat(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")
        output = model.generate(**ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        assert text == tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_a_base_model_folder_is_refused_as_a_generator(tmp_path):
    with pytest.raises(ValueError, match="not a causal language model"):
        LocalGenerator(save_tiny_causal_lm(tmp_path / "base", lm_head=False))


# Answers SmolLM2-135M-Instruct gave to the Fig. 4 prompt on DSP prompts.
REAL_ANSWERS = [
    ('The feature that is most consistently shared across the prompts is the feature that describes the common '
     'feature of the feature you identified as "is a negation" in the feature you identified as "is a negative".',
     "is a negation"),
    ('The feature you identified is: "Compose a two-line rhyme about change"', "Compose a two-line rhyme about change"),
    ('asks for a rhyming poem about nature"\n\nExplanation: ...', "asks for a rhyming poem about nature"),
    ('The feature you identified is: "The feature you identified is: "The process of making coffee using a French '
     'Press."\n\nThe feature you identified is: "The process', "The process of making coffee using a French Press"),
    ('The feature you identify is: "is a general question"', "is a general question"),
    ('The feature that I am trying to identify is the common feature of the two words "market" and "economy".',
     "market"),
    ('-"requests a business plan"', "requests a business plan"),
    ("Feature: asks for factual information.", "asks for factual information"),
    ('asks for a poem about the sea" and more', "asks for a poem about the sea"),
    ("- asks for advice\n- is a question", "asks for advice"),
    ("", ""),
]


@pytest.mark.parametrize("raw, description", REAL_ANSWERS)
def test_describer_answers_are_parsed(raw, description):
    assert parse_description(raw)[0] == description


def test_a_cache_hit_never_calls_the_generator_and_an_interrupted_run_resumes(tmp_path):
    prompts = [f"Feature description:\nd{i}\nInput text:\nd{i % 2} x\nDecision rule:" for i in range(10)]
    interrupted = CachedGenerator(Scripted(fail_after=4), cache_dir=tmp_path, chunk_size=2, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.judge(prompts)
    counting = Scripted()
    resumed = CachedGenerator(counting, cache_dir=tmp_path, chunk_size=2, show_progress=False)
    answers = resumed.judge(prompts)
    assert counting.calls == prompts[4:]  # the two finished chunks are not asked again
    assert [a.answer for a in answers] == [i < 2 for i in range(10)]  # "d0" in "d0 x", "d1" in "d1 x"
    again = Scripted()
    assert CachedGenerator(again, cache_dir=tmp_path, show_progress=False).judge(prompts) == answers
    assert again.calls == []
    # the describer's answers are cached separately from the judge's, keyed by the exact prompt
    assert CachedGenerator(again, cache_dir=tmp_path, show_progress=False).generate(["Prompt 1:\nabc"]) == ['abc"']
    assert again.calls == ["Prompt 1:\nabc"]


def test_a_line_cut_short_is_asked_again(tmp_path):
    cached = CachedGenerator(Scripted(), cache_dir=tmp_path, show_progress=False)
    cached.generate(["Prompt 1:\na", "Prompt 1:\nb"])
    cached.path.write_text(cached.path.read_text()[:-20])  # an interruption in the middle of the last line
    counting = Scripted()
    assert CachedGenerator(counting, cache_dir=tmp_path, show_progress=False).generate(
        ["Prompt 1:\na", "Prompt 1:\nb"]) == ['a"', 'b"']
    assert counting.calls == ["Prompt 1:\nb"]
    assert len(CachedGenerator(Scripted(), cache_dir=tmp_path, show_progress=False)._answers) == 2


def test_smoe_interpret_end_to_end_on_a_tiny_checkpoint(checkpoint_and_data, tiny_lm, capsys):
    model, tokenizer, pairs, tmp_path = checkpoint_and_data
    checkpoint = tmp_path / "checkpoint"
    code = main(["interpret", str(checkpoint), "--dataset", str(tmp_path / "pairs.jsonl"), "--generator", tiny_lm,
                 "--cache-dir", str(tmp_path / "cache"), "--generation-cache", str(tmp_path / "generations")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((checkpoint / "interpretation.json").read_text())
    result = record["results"]
    assert record["job"]["generator"] == tiny_lm and result["judge"] == result["describer"]
    assert len(result["experts"]) == 3 and "random_baseline" in result
    # Fidelity by hand: the measuring half's distinct prompts, routed by the model's own forward pass, against the
    # stored judgments of each expert's sample.
    measuring = split_pairs(pairs, seed=0, validation=0.0, test=0.5, group_by="prompt")["test"]
    texts, rows = distinct_prompts(measuring["prompt"])
    with torch.no_grad():
        routing = model(**tokenizer.pad([encode_pair(tokenizer, measuring[row]["prompt"], measuring[row]["chosen"])
                                         for row in rows], return_tensors="pt")).routing_weights
    for k, expert in enumerate(result["experts"]):
        assert len(expert["sample"]) == len(expert["judgments"]) == len(texts)  # 40 pairs: every prompt is judged
        assert expert["description_fidelity"] == pytest.approx(
            pearson(expert["judgments"], routing[expert["sample"], k]), abs=1e-5)
        assert expert["routing_share"] == pytest.approx(routing[:, k].mean().item(), abs=1e-5)
    assert result["notes"]  # a 40-pair set is smaller than the protocol: said in the results
    card = (checkpoint / "README.md").read_text()
    assert "| ID | Natural Language Description |" in card and "Not described yet" not in card
    assert (checkpoint / "interpretation.md").read_text().count("\n| ") == 3 + 1
    # a rerun replaces the table in place and asks the generator nothing new
    assert main(["interpret", str(checkpoint), "--dataset", str(tmp_path / "pairs.jsonl"), "--generator", tiny_lm,
                 "--cache-dir", str(tmp_path / "cache"), "--generation-cache", str(tmp_path / "generations")]) == 0
    assert (checkpoint / "README.md").read_text().count("| ID | Natural Language Description |") == 1


def test_judge_agreement_is_1_for_a_judge_that_reads_the_category_and_0_for_one_that_always_says_yes():
    texts = [f"{category} question {i}" for category in ("cooking", "travel", "music") for i in range(5)]
    categories = [text.split()[0] for text in texts]
    descriptions = {category: category for category in ("cooking", "travel", "music")}
    perfect = judge_agreement(Scripted(), texts, categories, descriptions)
    assert perfect["ideal_fidelity"] == pytest.approx(1.0)
    assert perfect["yes_rates"]["music"] == {"cooking": 0.0, "music": 1.0, "travel": 0.0}

    class AlwaysYes(Scripted):
        def judge(self, prompts):
            return [Judgment(True, 1.0, "YES") for _ in prompts]

    assert judge_agreement(AlwaysYes(), texts, categories, descriptions)["ideal_fidelity"] == 0.0  # Eq. 19: constant
    # half right: YES on its own category and on one other -> Pearson of z with the membership indicator, by hand
    z = np.array([1] * 5 + [1] * 5 + [0] * 5)
    membership = np.array([1] * 5 + [0] * 10)
    assert pearson(z, membership) == pytest.approx(np.corrcoef(z, membership)[0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_local_generator_on_cuda_matches_the_cpu(tiny_lm):
    prompts = [JUDGE_PROMPT.format(description="asks about a cat", input_text=text)
               for text in ("what is a cat ?", "code a poem", "why is the sun good ?", "hello", "a dog ?")]
    cpu = LocalGenerator(tiny_lm, device="cpu", dtype=torch.float32, batch_size=3)
    gpu = LocalGenerator(tiny_lm, device="cuda", dtype=torch.float32, batch_size=3)
    assert gpu.model.device.type == "cuda"
    for on_cpu, on_gpu in zip(cpu.judge(prompts), gpu.judge(prompts)):
        assert on_gpu.probability == pytest.approx(on_cpu.probability, abs=1e-4)
    assert gpu.generate(prompts[:3], max_new_tokens=5) == cpu.generate(prompts[:3], max_new_tokens=5)
    assert LocalGenerator(tiny_lm, device="cuda").dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported()
                                                            else torch.float32)


def test_bench_judge_batched_passes_give_the_one_at_a_time_answers(tiny_lm):
    results = bench_judge(tiny_lm, num_prompts=6, batch_size=4)
    assert results["prompts"] == 6 and results["batched_vs_one_at_a_time_max_probability_gap"] < 1e-4
    assert 0.0 <= results["fast_vs_fp32_same_answer"] <= 1.0
    assert results["speedup_fast_batched"] == pytest.approx(
        results["fast_batched_prompts_per_s"] / results["fp32_one_at_a_time_prompts_per_s"])


def test_the_expert_table_goes_into_a_new_card_or_an_old_one_without_markers(checkpoint_and_data):
    checkpoint = checkpoint_and_data[3] / "checkpoint"
    assert not (checkpoint / "README.md").exists()
    card = write_expert_table(checkpoint, "| ID | first table |\n", "`pairs.jsonl`").read_text()
    assert "| ID | first table |" in card and card.index("## Experts") < card.index("## Usage")
    old = card.replace(EXPERTS_START, "").replace(EXPERTS_END, "").replace("## Experts", "## Earlier")
    (checkpoint / "README.md").write_text(old)
    card = write_expert_table(checkpoint, "| ID | second table |\n", "`pairs.jsonl`").read_text()
    assert card.count("## Experts") == 1 and "| ID | second table |" in card
    assert card.index("## Experts") < card.index("## Usage")


def test_an_unreachable_endpoint_is_one_clear_error(checkpoint_and_data, capsys):
    tmp_path = checkpoint_and_data[3]
    code = main(["interpret", str(tmp_path / "checkpoint"), "--dataset", str(tmp_path / "pairs.jsonl"),
                 "--cache-dir", str(tmp_path / "cache"), "--generator", "http://127.0.0.1:9",
                 "--generation-cache", str(tmp_path / "generations")])
    error = capsys.readouterr().err
    assert code == 2 and "http://127.0.0.1:9" in error and "Traceback" not in error
