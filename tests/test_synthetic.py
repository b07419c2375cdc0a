"""The generated preference set (hf_smoe.data.synthetic): schema, determinism, size, and that every label is the
category annotator's documented rule applied to properties read back from the response text (plus the configured
label noise). The properties are parsed here from the text and the rules are written here from
docs/synthetic-data.md, independently of the generator's own bookkeeping."""

import itertools
import math
import re

import pytest
from datasets import Value

from hf_smoe.data import synthetic
from hf_smoe.data.synthetic import CATEGORIES, PROPERTIES, generate_preference_set

COLUMNS = ["prompt", "chosen", "rejected", "category", "attribute", "criterion", "user"]

# The documented rules, as lexicographic keys over the properties (primary first): bigger key = preferred.
RULES = {
    "cooking": lambda p: (1 - p["formal"], 1 - p["detailed"]),     # casual, then concise
    "programming": lambda p: (p["formal"], p["example"]),           # formal, then with an example
    "health": lambda p: (p["caveat"], p["formal"]),                 # caveat, then formal
    "travel": lambda p: (1 - p["caveat"], 1 - p["formal"]),         # no caveat, then casual
}
FORMAL_STARTS = tuple(opener.split("{core}")[0] for opener in synthetic.FORMAL_OPENERS)
CASUAL_STARTS = tuple(opener.split("{core}")[0] for opener in synthetic.CASUAL_OPENERS)


def read_properties(response: str) -> dict:
    """Properties of a response from its text alone: tone from the opening words, then the optional sentences in
    their fixed order (detail, example, caveat)."""
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", response)
    formal, casual = sentences[0].startswith(FORMAL_STARTS), sentences[0].startswith(CASUAL_STARTS)
    assert formal != casual, response
    rest = sentences[1:]
    caveat = bool(rest) and rest[-1] in synthetic.CAVEATS
    rest = rest[:-1] if caveat else rest
    example = bool(rest) and rest[-1].startswith(synthetic.EXAMPLE_LEADS)
    rest = rest[:-1] if example else rest
    assert len(rest) <= 1, response
    return {"detailed": int(len(rest) == 1), "formal": int(formal), "example": int(example), "caveat": int(caveat)}


def follows_rule(row) -> bool:
    rule = RULES[row["category"]]
    chosen, rejected = rule(read_properties(row["chosen"])), rule(read_properties(row["rejected"]))
    assert chosen != rejected, "a pair the rule ties was formed"
    return chosen > rejected


def prompt_text(row) -> str:
    return row["prompt"][0]["content"]


@pytest.fixture(scope="module")
def large_clean():
    return generate_preference_set(2000, seed=3, label_noise=0.0).to_list()


def test_same_seed_same_data_other_seed_other_data():
    first, again = generate_preference_set(80, seed=7), generate_preference_set(80, seed=7)
    other = generate_preference_set(80, seed=8)
    assert first.to_dict() == again.to_dict()
    assert first.to_dict() != other.to_dict()


def test_schema_is_the_common_pair_schema():
    data = generate_preference_set(40, seed=0)
    assert data.column_names == COLUMNS
    for column in ("chosen", "rejected", "category", "attribute", "criterion", "user"):
        assert data.features[column] == Value("string"), column
    users = {}
    for row in data.to_list():
        assert row["prompt"] == [{"role": "user", "content": prompt_text(row)}] and prompt_text(row)
        assert row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]
        assert row["category"] in CATEGORIES
        assert row["attribute"] is None and row["criterion"] is None
        assert isinstance(row["user"], str) and row["user"]
        users.setdefault(row["category"], set()).add(row["user"])
    # one annotator per category, distinct across categories
    assert all(len(u) == 1 for u in users.values()) and len(set.union(*users.values())) == len(CATEGORIES)


def test_at_least_four_categories_with_hundreds_of_distinct_prompts(large_clean):
    assert len(CATEGORIES) >= 4
    prompts = {}
    for row in large_clean:
        prompts.setdefault(row["category"], set()).add(prompt_text(row))
    assert set(prompts) == set(CATEGORIES)
    assert all(len(p) == 2000 // len(CATEGORIES) for p in prompts.values()), {c: len(p) for c, p in prompts.items()}
    for category in CATEGORIES:
        assert synthetic.prompt_capacity(category) >= 1000
    # not one template with a swapped word: many distinct openings (first three words) per category
    for category, texts in prompts.items():
        assert len({" ".join(text.split()[:3]) for text in texts}) >= 15, category


def test_default_size_spreads_prompts_evenly_and_in_an_interleaved_order():
    data = generate_preference_set().to_list()
    order = list(dict.fromkeys((prompt_text(row), row["category"]) for row in data))
    counts = {c: sum(category == c for _, category in order) for c in CATEGORIES}
    assert len(set(counts.values())) == 1 and min(counts.values()) >= 80, counts
    # any prefix of whole rounds is balanced: the first 20 prompts hold 5 of each category
    first = [category for _, category in order[:20]]
    assert all(first.count(c) == 20 // len(CATEGORIES) for c in CATEGORIES)
    # rows of one prompt are contiguous
    runs = [prompt for prompt, _ in itertools.groupby(prompt_text(row) for row in data)]
    assert len(runs) == len(order)


def test_no_prompt_names_a_category(large_clean):
    for row in large_clean:
        text = prompt_text(row).lower()
        assert not any(name in text for name in CATEGORIES), text


def test_prompts_and_responses_are_short():
    for row in generate_preference_set(200, seed=1).to_list():
        assert 5 <= len(prompt_text(row).split()) <= 25, prompt_text(row)
        for response in (row["chosen"], row["rejected"]):
            assert 4 <= len(response.split()) <= 45, response


def test_responses_are_reused_across_pairs():
    num_prompts, per_prompt = 120, 5
    data = generate_preference_set(num_prompts, responses_per_prompt=per_prompt, seed=2).to_list()
    texts = {(prompt_text(row), response) for row in data for response in (row["chosen"], row["rejected"])}
    assert len(texts) <= num_prompts * per_prompt
    assert len(data) > 1.3 * len(texts)


def test_noise_free_labels_follow_every_category_rule(large_clean):
    assert all(follows_rule(row) for row in large_clean)


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_label_noise_rate_is_binomial(noise):
    data = generate_preference_set(2000, seed=4, label_noise=noise).to_list()
    flips = sum(not follows_rule(row) for row in data)
    bound = 4 * math.sqrt(noise * (1 - noise) / len(data))
    assert abs(flips / len(data) - noise) <= bound, (flips, len(data))


def test_every_rule_is_visible_in_its_category(large_clean):
    """At noise 0 each category's primary property decides every pair where it differs, its secondary decides the
    others, and the two ignored properties alone never separate a pair."""
    for category in CATEGORIES:
        rows = [row for row in large_clean if row["category"] == category]
        decided_by = {"primary": 0, "secondary": 0}
        for row in rows:
            chosen, rejected = RULES[category](read_properties(row["chosen"])), RULES[category](
                read_properties(row["rejected"]))
            level = "primary" if chosen[0] != rejected[0] else "secondary"
            assert chosen > rejected
            decided_by[level] += 1
        assert decided_by["primary"] >= 0.5 * len(rows) and decided_by["secondary"] >= 0.1 * len(rows), \
            (category, decided_by)


def test_preference_score_agrees_with_the_documented_rules():
    for category, rule in RULES.items():
        for first, second in itertools.product(itertools.product((0, 1), repeat=len(PROPERTIES)), repeat=2):
            a, b = dict(zip(PROPERTIES, first)), dict(zip(PROPERTIES, second))
            assert (synthetic.preference_score(category, a) > synthetic.preference_score(category, b)) == \
                (rule(a) > rule(b)), (category, a, b)


def test_categories_conflict(large_clean):
    """Cooking and programming disagree on tone, health and travel on the caveat: judged by the other's rule (where
    that rule is not tied), each category's labels are mostly reversed, so no single rule fits all four."""
    for mine, theirs in [("cooking", "programming"), ("programming", "cooking"), ("health", "travel"),
                         ("travel", "health")]:
        agree = total = 0
        for row in large_clean:
            if row["category"] != mine:
                continue
            chosen = RULES[theirs](read_properties(row["chosen"]))
            rejected = RULES[theirs](read_properties(row["rejected"]))
            if chosen != rejected:
                total, agree = total + 1, agree + (chosen > rejected)
        assert total > 100 and agree / total < 0.35, (mine, theirs, agree, total)


@pytest.mark.parametrize("kwargs", [{"label_noise": -0.1}, {"label_noise": 1.5}, {"responses_per_prompt": 1},
                                    {"responses_per_prompt": 17}, {"num_prompts": 3},
                                    {"num_prompts": 100_000}])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        generate_preference_set(**kwargs)
