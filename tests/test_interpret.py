"""Reading the experts: the paper's prompts, the stratified fidelity sample, the random baseline, the local judge's
probabilities, describer parsing, the answer cache, and `smoe interpret` end to end on a tiny checkpoint."""

import json
import re
import typing
from dataclasses import fields
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_smoe import encode_pair
from hf_smoe.bench import bench_judge
from hf_smoe.cli.arguments import GeneratorArguments
from hf_smoe.cli.main import main
from hf_smoe.data import split_pairs
from hf_smoe.hub.card import EXPERTS_END, EXPERTS_START, write_expert_table
from hf_smoe.interpret import ReadingSettings
from hf_smoe.interpret.checkpoint import expert_table_markdown
from hf_smoe.interpret.describe import distinct_prompts, interpret_experts
from hf_smoe.interpret.fidelity import fidelity_sample
from hf_smoe.interpret.generators.base import Judgment, TextGenerator
from hf_smoe.interpret.generators.cache import CachedGenerator
from hf_smoe.interpret.generators.local import LocalGenerator, as_chat
from hf_smoe.interpret.judge_checks import judge_agreement, judge_check_prompts
from hf_smoe.errors import InputError
from hf_smoe.interpret.prompts import (DESCRIBER_PROMPT, DESCRIBER_PROMPTS, JUDGE_EXAMPLE_CHARS, JUDGE_PROMPT, JUDGE_PROMPTS,
                                       describer_prompt, judge_prompt, parse_description, shorten)
from hf_smoe.runtime import save_run
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

    def generate(self, prompts, max_new_tokens=64, seed=None):
        self._record(prompts)
        return [re.search(r"Prompt 1:\n(.*)", prompt).group(1) + '"' for prompt in prompts]

    def judge(self, prompts):
        self._record(prompts)
        return [Judgment(matches(prompt), None, "YES") for prompt in prompts]


def matches(prompt: str) -> bool:
    """Whether the first word of the description in a judge prompt (Fig. 5 or the question variant) occurs in its
    input text."""
    if prompt.startswith("Feature: "):  # the question variant
        description = prompt[len("Feature: "):].split("\n")[0]
        text = prompt.split('"""\n')[1].split('\n"""')[0]
    else:
        description = prompt.split("Feature description:\n")[1].split("\nInput text:")[0]
        text = prompt.split("Input text:\n")[1].split("\nDecision rule:")[0]
    return description.split()[0] in text


class RanksButSaysNo(Scripted):
    """A small judge whose threshold sits too high: NO to everything, but its P(YES) is higher on every matching
    prompt (0.30-0.34) than on any other (0.05-0.09)."""

    def judge(self, prompts):
        self._record(prompts)
        return [Judgment(False, (0.3 if matches(prompt) else 0.05) + 0.01 * (i % 5), "NO")
                for i, prompt in enumerate(prompts)]


class RandomJudge(Scripted):
    """P(YES) drawn uniformly (seeded), whatever the prompt; YES above 0.5. Keeps every probability it gave."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.rng, self.given = np.random.default_rng(seed), []

    def judge(self, prompts):
        self._record(prompts)
        probabilities = self.rng.random(len(prompts)).tolist()
        self.given += probabilities
        return [Judgment(p > 0.5, p, "YES" if p > 0.5 else "NO") for p in probabilities]


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
                               seed=5, settings=ReadingSettings.paper(top_n=5, per_stratum=20))
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
    # the reading settings are the defaults, recorded; each description says whether it describes
    assert record["job"]["describer_prompt"] == "short" and record["job"]["calibrate_threshold"] is True
    assert result["settings"] == ReadingSettings().to_dict()
    assert result["describing_rate"] == pytest.approx(np.mean([e["problem"] is None for e in result["experts"]]))
    for expert in result["experts"]:  # distinctive words come from the expert's top prompts
        shown = " ".join(expert["top_examples"]).lower()
        assert all(word in shown for gram in expert["distinctive_words"] for word in gram.split())
    card = (checkpoint / "README.md").read_text()
    assert "| ID | Natural Language Description | Distinctive words |" in card and "Not described yet" not in card
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
    # Scripted gives no probabilities (as an endpoint without log-probabilities): no P(YES) figures, not made-up ones
    assert perfect["ideal_fidelity_probability"] is None and perfect["auc"] is None
    assert set(perfect["auc_per_category"].values()) == {None}
    assert perfect["yes_rates"]["music"] == {"cooking": 0.0, "music": 1.0, "travel": 0.0}

    class AlwaysYes(Scripted):
        def judge(self, prompts):
            return [Judgment(True, 1.0, "YES") for _ in prompts]

    assert judge_agreement(AlwaysYes(), texts, categories, descriptions)["ideal_fidelity"] == 0.0  # Eq. 19: constant
    # half right: YES on its own category and on one other -> Pearson of z with the membership indicator, by hand
    z = np.array([1] * 5 + [1] * 5 + [0] * 5)
    membership = np.array([1] * 5 + [0] * 10)
    assert pearson(z, membership) == pytest.approx(np.corrcoef(z, membership)[0, 1])


CATEGORY_NAMES = ("cooking", "travel", "music")


def category_prompts(per_category: int) -> tuple[list, list, dict]:
    texts = [f"{category} question {i}" for i in range(per_category) for category in CATEGORY_NAMES]
    return texts, [text.split()[0] for text in texts], {category: category for category in CATEGORY_NAMES}


def pairs_auc(scores, matching) -> float:
    """Every (matching, other) pair of prompts counted: a win when the matching one scores higher, half on a tie."""
    scores, matching = np.asarray(scores), np.asarray(matching, bool)
    difference = scores[matching][:, None] - scores[~matching][None, :]
    return float((difference > 0).mean() + 0.5 * (difference == 0).mean())


def test_a_judge_that_says_no_to_everything_still_ranks_by_p_yes():
    texts, categories, descriptions = category_prompts(5)
    check = judge_agreement(RanksButSaysNo(), texts, categories, descriptions)
    assert check["ideal_fidelity"] == 0.0  # no variance in the YES/NO answers (Eq. 19's edge case)
    assert all(rate == 0.0 for rates in check["yes_rates"].values() for rate in rates.values())
    # by hand: descriptions in sorted order, each against every text; P(YES) as RanksButSaysNo gives it
    expected = {}
    for d, name in enumerate(sorted(descriptions)):
        scores = [(0.3 if name in text else 0.05) + 0.01 * ((d * len(texts) + i) % 5) for i, text in enumerate(texts)]
        expected[name] = pearson(scores, [category == name for category in categories])
        assert check["ideal_fidelity_probability_per_category"][name] == pytest.approx(expected[name], abs=1e-6)
        assert check["auc_per_category"][name] == 1.0
    assert check["ideal_fidelity_probability"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert check["ideal_fidelity_probability"] > 0.9 and check["auc"] == 1.0


def test_a_random_judge_has_an_auc_near_one_half():
    texts, categories, descriptions = category_prompts(40)
    judge = RandomJudge(seed=3)
    check = judge_agreement(judge, texts, categories, descriptions)
    given = np.array(judge.given).reshape(len(descriptions), len(texts))
    for d, name in enumerate(sorted(descriptions)):
        matching = [category == name for category in categories]
        assert check["auc_per_category"][name] == pytest.approx(pairs_auc(given[d], matching), abs=1e-12)
        assert check["ideal_fidelity_probability_per_category"][name] == pytest.approx(
            pearson(given[d], matching), abs=1e-6)
    assert abs(check["auc"] - 0.5) < 0.1 and abs(check["ideal_fidelity_probability"]) < 0.2


def test_fidelity_on_p_yes_is_reported_beside_the_binary_one():
    generator = torch.Generator().manual_seed(0)
    texts = [f"topic{i % 3} prompt{i}" for i in range(90)]
    routing = torch.softmax(3 * torch.randn(90, 3, generator=generator), dim=1)
    judge = RandomJudge(seed=1)
    result = interpret_experts(Scripted(), judge, routing, texts, routing, texts,
                               settings=ReadingSettings.paper(top_n=5, per_stratum=10))
    for k, expert in enumerate(result["experts"]):
        assert expert["fidelity_probability"] == pytest.approx(
            pearson(expert["yes_probabilities"], routing[expert["sample"], k]), abs=1e-6)
        assert expert["description_fidelity"] == pytest.approx(
            pearson(expert["judgments"], routing[expert["sample"], k]), abs=1e-6)
    for scored in (result, result["random_baseline"]):
        assert scored["fidelity_probability"] == pytest.approx(
            np.mean([e["fidelity_probability"] for e in scored["experts"]]))
    table = expert_table_markdown(result | {"notes": []})
    assert "| Description Fidelity (↑) | Fidelity on P(YES) (↑) |" in table
    assert f"{result['description_fidelity']:.3f} (on P(YES): {result['fidelity_probability']:.3f})" in table
    # a judge without probabilities: None, never a made-up number, and "-" in the table
    unknown = interpret_experts(Scripted(), Scripted(), routing, texts, routing, texts,
                                settings=ReadingSettings.paper(top_n=5, per_stratum=10))
    assert unknown["fidelity_probability"] is None
    assert all(expert["fidelity_probability"] is None for expert in unknown["experts"])
    assert "(on P(YES)" not in expert_table_markdown(unknown)


def test_judge_check_prompts_keep_at_most_n_of_each_category_seeded():
    texts, categories, _ = category_prompts(10)
    picked, picked_categories = judge_check_prompts(texts + ["odd one"], categories + [None], 4, seed=1)
    assert [picked_categories.count(c) for c in CATEGORY_NAMES] == [4, 4, 4] and "odd one" not in picked
    assert picked == sorted(picked, key=texts.index) and all(c == t.split()[0] for t, c in zip(picked,
                                                                                              picked_categories))
    assert judge_check_prompts(texts, categories, 4, seed=1) == (picked, picked_categories)
    assert judge_check_prompts(texts, categories, 4, seed=2) != (picked, picked_categories)


def interpret_check(tmp_path, tiny_lm, descriptions, *extra):
    return main(["interpret", str(tmp_path / "checkpoint"), "--dataset", str(tmp_path / "pairs.jsonl"), "--generator",
                 tiny_lm, "--generation-cache", str(tmp_path / "generations"), "--check-judge", str(descriptions),
                 *extra])


def test_smoe_interpret_check_judge_measures_the_judge_and_keeps_the_interpretation(checkpoint_and_data, tiny_lm,
                                                                                     capsys):
    _, _, pairs, tmp_path = checkpoint_and_data
    checkpoint = tmp_path / "checkpoint"
    descriptions = {"cooking": "asks about cooking or food", "programming": "asks about programming or code",
                    "health": "asks about health", "travel": "asks about travel"}
    (tmp_path / "descriptions.yaml").write_text("".join(f"{k}: {v}\n" for k, v in descriptions.items()))
    save_run(checkpoint, {"dataset": "earlier"}, {"experts": ["kept"]}, "interpretation.json")
    earlier = json.loads((checkpoint / "interpretation.json").read_text())
    assert interpret_check(tmp_path, tiny_lm, tmp_path / "descriptions.yaml", "--check-prompts", "3") == 0
    out = capsys.readouterr().out
    assert "AUC of P(YES)" in out and "ideal router" in out and "on P(YES)" in out
    record = json.loads((checkpoint / "interpretation.json").read_text())
    assert record["command"] == earlier["command"] and record["results"]["experts"] == ["kept"]
    check = record["results"]["judge_check"]
    assert check["job"]["check_prompts"] == 3 and check["descriptions"] == descriptions
    # the measuring half's distinct prompts, at most 3 of each category, judged as judge_agreement judges them
    measuring = split_pairs(pairs, seed=0, validation=0.0, test=0.5, group_by="prompt")["test"]
    texts, rows = distinct_prompts(measuring["prompt"])
    categories = [measuring[row]["category"] for row in rows]
    assert check["prompts"] == sum(min(3, categories.count(c)) for c in set(categories))
    texts, categories = judge_check_prompts(texts, categories, 3, seed=0)
    judge = CachedGenerator(LocalGenerator(tiny_lm), cache_dir=tmp_path / "generations", show_progress=False)
    expected = judge_agreement(judge, texts, categories, descriptions, "question")  # the CLI's default prompt
    assert {key: check[key] for key in expected} == expected  # the answers come from the cache: exact
    for key in ("ideal_fidelity", "ideal_fidelity_probability", "auc"):
        assert check[key] is not None and -1 <= check[key] <= 1
    # the interpretation run afterwards keeps the check beside its experts
    assert main(["interpret", str(checkpoint), "--dataset", str(tmp_path / "pairs.jsonl"), "--generator", tiny_lm,
                 "--cache-dir", str(tmp_path / "cache"), "--generation-cache", str(tmp_path / "generations"),
                 "--no-random-baseline"]) == 0
    results = json.loads((checkpoint / "interpretation.json").read_text())["results"]
    assert len(results["experts"]) == 3 and results["judge_check"] == check


def error_lines(stderr: str) -> int:
    """The lines `smoe` wrote about the failure (progress bars of the data loading aside)."""
    return sum("error" in line for line in stderr.replace("\r", "\n").splitlines())


def test_bad_descriptions_files_are_one_clear_line(checkpoint_and_data, tiny_lm, capsys):
    _, _, pairs, tmp_path = checkpoint_and_data
    cases = {"unknown.json": ('{"cooking": "food", "gardening": "plants", "sports": "games"}', "'gardening', 'sports'"),
             "list.yaml": ("- cooking\n- travel\n", "expected a mapping"),
             "empty.yaml": ('cooking: ""\n', "'cooking'"),
             "broken.json": ('{"cooking": ', "not valid JSON"),
             "missing.yaml": (None, "cannot read")}
    for name, (text, said) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert interpret_check(tmp_path, tiny_lm, tmp_path / name) == 2
        error = capsys.readouterr().err
        assert said in error and name in error and error_lines(error) == 1 and "Traceback" not in error, error
    pairs.remove_columns("category").to_json(tmp_path / "pairs.jsonl")  # data without categories
    (tmp_path / "ok.yaml").write_text("cooking: asks about food\n")
    assert interpret_check(tmp_path, tiny_lm, tmp_path / "ok.yaml") == 2
    error = capsys.readouterr().err
    assert "no `category` column" in error and error_lines(error) == 1 and "Traceback" not in error


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
    results = bench_judge(tiny_lm, num_prompts=6, batch_size=4)[tiny_lm]
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


def test_the_question_judge_prompt_is_its_text_and_the_cli_defaults_to_it():
    text = "Write {a} poem about my cat " + "x" * 3000
    expected = ('Feature: asks about {cats}\n\nUser prompt:\n"""\n' + shorten(text, JUDGE_EXAMPLE_CHARS)
                + '\n"""\n\nDoes the user prompt have the feature? Answer YES or NO.')
    assert judge_prompt("asks about {cats}", text, "question") == expected
    fig5 = JUDGE_PROMPT.format(description="asks about {cats}", input_text=shorten(text, JUDGE_EXAMPLE_CHARS))
    assert judge_prompt("asks about {cats}", text) == judge_prompt("asks about {cats}", text, "paper") == fig5
    with pytest.raises(InputError, match="'nope'.*paper, question"):
        judge_prompt("asks about cats", text, "nope")
    # the CLI offers exactly the templates there are, and defaults to the reading settings' choices
    for name, templates in (("judge_prompt", JUDGE_PROMPTS), ("describer_prompt", DESCRIBER_PROMPTS)):
        flag = next(field for field in fields(GeneratorArguments) if field.name == name)
        assert set(typing.get_args(flag.type)) == set(templates)
        assert flag.default == getattr(ReadingSettings(), name)
    assert ReadingSettings().judge_prompt == "question" and ReadingSettings.paper().judge_prompt == "paper"


def test_the_judge_prompt_variant_reaches_the_judge():
    texts, categories, descriptions = category_prompts(5)
    for variant, first_line in (("question", "Feature: "), ("paper", "You are a binary classifier.")):
        judge = Scripted()
        check = judge_agreement(judge, texts, categories, descriptions, judge_prompt=variant)
        assert judge.calls == [judge_prompt(descriptions[name], text, variant) for name in sorted(descriptions)
                               for text in texts]
        assert all(call.startswith(first_line) for call in judge.calls)
        assert check["ideal_fidelity"] == pytest.approx(1.0) and check["judge_prompt"] == variant
    routing = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    describer, judge = Scripted(), Scripted()
    result = interpret_experts(describer, judge, routing, texts[:12], routing, texts[:12],
                               settings=ReadingSettings.paper(judge_prompt="question"))
    expected = [judge_prompt(expert["description"], texts[i], "question")
                for expert in result["experts"] + result["random_baseline"]["experts"] for i in expert["sample"]]
    assert judge.calls == expected and all(call.startswith("Task Overview") for call in describer.calls)


def test_smoe_interpret_judge_prompt_reaches_the_judge_and_is_recorded(checkpoint_and_data, capsys):
    _, _, _, tmp_path = checkpoint_and_data
    checkpoint = tmp_path / "checkpoint"
    (tmp_path / "descriptions.yaml").write_text("cooking: cooking\ntravel: travel\n")
    judge = Scripted()
    with mock.patch("hf_smoe.interpret.checkpoint.load_judge", return_value=judge):
        assert interpret_check(tmp_path, "unused", tmp_path / "descriptions.yaml", "--judge-prompt", "question") == 0
    assert judge.calls and all(call.startswith("Feature: ") for call in judge.calls)
    check = json.loads((checkpoint / "interpretation.json").read_text())["results"]["judge_check"]
    assert check["job"]["judge_prompt"] == check["judge_prompt"] == "question"
    judge = Scripted()
    with mock.patch("hf_smoe.interpret.checkpoint.load_describer_and_judge", return_value=(Scripted(), judge)):
        assert main(["interpret", str(checkpoint), "--dataset", str(tmp_path / "pairs.jsonl"), "--cache-dir",
                     str(tmp_path / "cache"), "--judge-prompt", "question", "--no-random-baseline"]) == 0
    assert judge.calls and all(call.startswith("Feature: ") for call in judge.calls)
    assert json.loads((checkpoint / "interpretation.json").read_text())["job"]["judge_prompt"] == "question"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything runs
        interpret_check(tmp_path, "unused", tmp_path / "descriptions.yaml", "--judge-prompt", "nope")
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "'nope'" in error and "paper" in error and "question" in error and error_lines(error) == 1, error


def test_smoe_reproduce_passes_the_reading_settings_to_table4_and_fig6(tmp_path):
    for experiment, function in (("table4", "reproduce_table4"), ("fig6", "reproduce_fig6")):
        with mock.patch(f"hf_smoe.reproduce.{function}") as reproduce:
            assert main(["reproduce", experiment, "--data-root", str(tmp_path), "--judge-prompt", "paper",
                         "--describer-prompt", "paper", "--no-calibrate-threshold", "--candidates", "3",
                         "--samples-per-stratum", "7"]) == 0
        assert reproduce.call_args.kwargs["settings"] == ReadingSettings.paper(candidates=3, per_stratum=7)
        with mock.patch(f"hf_smoe.reproduce.{function}") as reproduce:
            assert main(["reproduce", experiment, "--data-root", str(tmp_path)]) == 0
        assert reproduce.call_args.kwargs["settings"] == ReadingSettings()
