"""The describer's answers: lead-ins dropped, answers that do not describe detected and asked again (seeded samples),
candidate descriptions chosen on the describing prompts only, the experts' distinctive words, and the default
describer."""

import re
import warnings
from unittest import mock

import pytest
import torch

from hf_smoe.errors import InputError
from hf_smoe.interpret import ReadingSettings
from hf_smoe.interpret.checkpoint import expert_table_markdown
from hf_smoe.interpret.describe import ATTEMPTS, describe_experts, interpret_experts
from hf_smoe.interpret.distinctive_words import distinctive_words, prompt_ngrams
from hf_smoe.interpret.generators import CachedGenerator, LocalGenerator
from hf_smoe.interpret.generators import loading as generator_loading
from hf_smoe.interpret.generators.base import Judgment, TextGenerator
from hf_smoe.interpret.prompts import description_problem, describer_prompt, parse_description
from hf_smoe.testing import save_tiny_causal_lm

FIG4_EXAMPLE = "asks for emotionally supportive advice"


@pytest.mark.parametrize("raw, expected", [
    ("Each prompt shares the feature of being a business style.", "a business style"),
    ("Each of these prompts asks for a humorous tone", "asks for a humorous tone"),
    ("All of these prompts are about cooking.", "are about cooking"),
    ("The common feature is: legal questions", "legal questions"),
    ('-"requests travel advice"', "requests travel advice"),
    ("Entertaining style", "Entertaining style"),
])
def test_a_sentence_about_the_prompts_keeps_only_the_feature(raw, expected):
    assert parse_description(raw)[0] == expected


@pytest.mark.parametrize("description, examples, variant, problem", [
    (FIG4_EXAMPLE, [], "paper", "copies the instructions"),  # Fig. 4's own example feature
    ("asks for emotional supportive advice", [], "paper", "copies the instructions"),  # with another ending
    ("asks for creative writing", [], "paper", "copies the instructions"),  # a 4-word run of another example
    ("creative writing", [], "paper", "copies the instructions"),  # all of a short description is in Fig. 4
    (FIG4_EXAMPLE, [], "short", None),  # the short prompt holds no example features
    ("a topic, a domain, a requested style", [], "short", "copies the instructions"),
    ("how do I bake sourdough bread at home", ["How do I bake sourdough bread at home without yeast?"], "short",
     "copies a prompt"),
    ("Sure! Recipes for bread", [], "short", "answers a prompt instead of describing"),
    (" ".join(["word"] * 21), [], "short", "answers a prompt instead of describing"),
    ("asks questions unlike other prompts", [], "short", "speaks of the prompts or the model, not of a feature"),
    ("asks how to bake bread", ["How do I bake sourdough bread at home without yeast?"], "paper", None),
    ("", [], "short", "empty answer"),
])
def test_description_problems(description, examples, variant, problem):
    assert description_problem(description, examples, variant) == problem


def first_word(describer_request: str) -> str:
    return re.search(r"Prompt 1:\n(\w+)", describer_request).group(1)


class SeededDescriber(TextGenerator):
    """The greedy answer copies Fig. 4's example; a sampled one names the first prompt's first word, unless the
    seed is in `copies_when_sampled`. Records the seed of every call."""

    identity = "seeded"

    def __init__(self, copies_when_sampled=()):
        self.seeds, self.copies_when_sampled = [], set(copies_when_sampled)

    def generate(self, prompts, max_new_tokens=64, seed=None):
        self.seeds.append(seed)
        if seed is None or seed in self.copies_when_sampled:
            return [f'-"{FIG4_EXAMPLE}"'] * len(prompts)
        return [f"asks about {first_word(prompt)} {seed}" for prompt in prompts]

    def judge(self, prompts):
        raise AssertionError("no judge is needed for one candidate")


def two_topic_routing(n: int = 12):
    texts = [f"{'cats' if i % 2 == 0 else 'code'} question {i}" for i in range(n)]
    routing = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(n)])
    return texts, routing


def test_an_answer_that_copies_is_asked_again_with_seeded_samples():
    texts, routing = two_topic_routing()
    describer = SeededDescriber()
    experts = describe_experts(describer, routing, texts, ReadingSettings.paper(top_n=3), seed=2)
    first_sample = 2 * 1000 * ATTEMPTS + 1  # (seed * 1000 + candidate 0) * ATTEMPTS + attempt 1
    assert describer.seeds == [None, first_sample]  # one greedy call, then one sampled call for both experts
    assert [e["description"] for e in experts] == [f"asks about cats {first_sample}", f"asks about code {first_sample}"]
    assert all(e["attempts"] == 2 and e["problem"] is None for e in experts)
    # a describer that keeps copying is asked ATTEMPTS times and its last answer kept with the problem named
    stubborn = SeededDescriber(copies_when_sampled=range(10 ** 6))
    experts = describe_experts(stubborn, routing, texts, ReadingSettings.paper(top_n=3), seed=2)
    assert len(stubborn.seeds) == ATTEMPTS and len(set(stubborn.seeds)) == ATTEMPTS
    assert all(e["attempts"] == ATTEMPTS and e["problem"] == "copies the instructions" for e in experts)


class TopicJudge(TextGenerator):
    """YES with P(YES) 0.9 when the description's last-but-one word is in the judged prompt, else 0.1; records the
    prompts it judged."""

    identity = "topic-judge"

    def __init__(self):
        self.judged = []

    def generate(self, prompts, max_new_tokens=64, seed=None):
        raise AssertionError("the judge does not write")

    def judge(self, prompts):
        judgments = []
        for prompt in prompts:
            description = prompt.split("Feature: ")[1].split("\n")[0]
            text = re.search(r'"""\n(.*)\n"""', prompt, re.DOTALL).group(1)
            self.judged.append(text)
            match = description.split()[-2] in text
            judgments.append(Judgment(match, 0.9 if match else 0.1, "YES" if match else "NO"))
        return judgments


class SwappedDescriber(TextGenerator):
    """Greedy: names the other expert's topic (a wrong description that still describes); sampled: the right one."""

    identity = "swapped"

    def generate(self, prompts, max_new_tokens=64, seed=None):
        answers = []
        for prompt in prompts:
            topic = first_word(prompt)
            if seed is None:
                topic = {"cats": "code", "code": "cats"}[topic]
            answers.append(f"asks about {topic} questions")
        return answers

    def judge(self, prompts):
        raise AssertionError("the describer does not judge")


def test_candidates_are_chosen_on_the_describing_prompts_and_never_on_the_measuring_ones():
    describe_texts, describe_routing = two_topic_routing(20)
    measure_texts = [f"{'cats' if i % 2 == 0 else 'code'} test {i}" for i in range(100, 140)]
    measure_routing = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(40)])
    judge = TopicJudge()
    settings = ReadingSettings(top_n=3, per_stratum=5, candidates=2, calibrate_threshold=False)
    experts = describe_experts(SwappedDescriber(), describe_routing, describe_texts, settings, judge=judge)
    assert set(judge.judged) <= set(describe_texts)
    assert [e["description"] for e in experts] == ["asks about cats questions", "asks about code questions"]
    assert [e["candidate"] for e in experts] == [1, 1]
    for expert in experts:  # the greedy (swapped) candidate is perfectly wrong, the sampled one perfectly right
        assert [round(c["describing_fidelity"], 6) for c in expert["candidates"]] == [-1.0, 1.0]
    result = interpret_experts(SwappedDescriber(), TopicJudge(), describe_routing, describe_texts, measure_routing,
                               measure_texts, settings=settings, random_baseline=False)
    assert result["description_fidelity"] == pytest.approx(1.0) and result["describing_rate"] == 1.0
    greedy_only = interpret_experts(SwappedDescriber(), TopicJudge(), describe_routing, describe_texts,
                                    measure_routing, measure_texts, settings=ReadingSettings(
                                        top_n=3, per_stratum=5, calibrate_threshold=False), random_baseline=False)
    assert greedy_only["description_fidelity"] == pytest.approx(-1.0)


def test_distinctive_words_are_a_contrast_of_document_frequencies():
    texts = ["bake bread recipe", "bake cake recipe", "bread recipe please", "python code bug", "python loop",
             "code review", "travel to paris", "travel tips"]
    routing = torch.tensor([[1.0]] * 3 + [[0.0]] * 5)
    # top = the 3 baking prompts (min_top 3 > 10% of 8); "recipe": 3/3 - 0/5 = 1.0; "bake", "bread": 2/3 - 0;
    # "bake bread" (1 top prompt) and "cake" are below 2 hits; "recipe" outranks "bread recipe" (2/3) and shares
    # its word, so the bigram is left out
    assert distinctive_words(texts, routing, min_top=3) == [["recipe", "bake", "bread"]]
    assert prompt_ngrams("Please write the Python code for me") == {"python", "code", "python code"}
    # a word as common outside the top as inside scores 0 and is never shown
    assert distinctive_words(["a x", "b x", "c x", "d x"], torch.tensor([[1.0], [1.0], [0.0], [0.0]]),
                             min_top=2) == [[]]


def test_the_expert_table_shows_distinctive_words_and_a_description_that_does_not_describe():
    interpretation = {"experts": [
        {"expert": 0, "description": "asks about cats", "distinctive_words": ["cats", "kitten"], "problem": None,
         "description_fidelity": 0.5, "fidelity_probability": 0.6, "expert_specialization": 0.1, "routing_share": 0.5},
        {"expert": 1, "description": FIG4_EXAMPLE, "distinctive_words": [], "problem": "copies the instructions",
         "description_fidelity": 0.0, "fidelity_probability": 0.1, "expert_specialization": None,
         "routing_share": 0.5}], "description_fidelity": 0.25, "fidelity_probability": 0.35, "notes": []}
    table = expert_table_markdown(interpretation)
    assert "| Distinctive words |" in table.splitlines()[0]
    assert "| 0 | asks about cats | cats, kitten | 0.50 | 0.60 | 10.00 | 50.0% |" in table
    assert f"| 1 | {FIG4_EXAMPLE} *(the describer's answer copies the instructions)* | - | 0.00 |" in table


def test_the_default_generator_is_the_best_offline_model_when_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(generator_loading, "split_model_installed", lambda model: True)
    assert generator_loading.default_generator_spec() == "qwen2.5-coder-1.5b-instruct"
    monkeypatch.setattr(generator_loading, "split_model_installed", lambda model: False)
    with pytest.warns(UserWarning, match=r'pip install "hf-smoe\[describer\]"') as caught:
        assert generator_loading.default_generator_spec() == "local"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with mock.patch.object(generator_loading, "LocalGenerator") as local, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local.return_value.identity = "mocked"
        generator_loading.load_generator("default", cache_dir=tmp_path, show_progress=False)
    assert local.call_args.args[0] == str(generator_loading.default_generator_path())


def test_seeded_samples_repeat_differ_from_greedy_and_leave_the_global_rng_alone(tmp_path):
    generator = LocalGenerator(save_tiny_causal_lm(tmp_path / "lm"), dtype=torch.float32)
    prompts = ["tell me about cats", "write some code"]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generator.generate(prompts, max_new_tokens=12, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # sampling forked the RNG
    assert generator.generate(prompts, max_new_tokens=12, seed=7) == first
    samples = {tuple(generator.generate(prompts, max_new_tokens=12, seed=seed)) for seed in range(8, 12)}
    assert len(samples | {tuple(first)}) > 1  # a random tiny LM samples different texts under different seeds
    cached = CachedGenerator(generator, cache_dir=tmp_path / "cache", show_progress=False)
    assert cached.generate(prompts, max_new_tokens=12, seed=7) == first
    assert cached.generate(prompts, max_new_tokens=12) == generator.generate(prompts, max_new_tokens=12)
    assert len(cached._answers) == 4  # greedy and seeded answers are kept apart


def test_the_short_describer_prompt_numbers_the_examples():
    prompt = describer_prompt(["first {x}", "second"], "short")
    assert "Here are 2 user prompts" in prompt and "Prompt 1:\nfirst {x}\n\nPrompt 2:\nsecond" in prompt


@pytest.mark.parametrize("changes, message", [
    ({"candidates": 0}, "candidates: must be a whole number >= 1"),
    ({"per_stratum": 0}, "per_stratum: must be a whole number >= 1"),
    ({"describer_prompt": "long"}, "describer_prompt: unknown variant 'long'; choose from paper, short"),
    ({"judge_prompt": "nope"}, "judge_prompt: unknown variant 'nope'; choose from paper, question"),
])
def test_reading_settings_refuse_bad_values_naming_the_field(changes, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ReadingSettings(**changes)
