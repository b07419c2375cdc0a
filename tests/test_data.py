"""Data adapters: the real files in shared/data, hand-written fixtures per format, the seeded split, bad input."""

import gzip
import json
import warnings
from pathlib import Path

import pytest
from datasets import Dataset, concatenate_datasets

from hf_smoe.data import (DSP_CRITERIA, DSP_RESPONSES, FORMATS, HELPSTEER2_CRITERIA, PAIR_FEATURES,
                          PERSONAL_LLM_REWARD_MODELS, RPR_EVALUATION_ATTRIBUTES, load_pairs, personal_llm_users,
                          split_pairs)
from hf_smoe.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
HH_HELPFUL = DATA / "hh-rlhf" / "helpful-base.test.jsonl.gz"
HH_HARMLESS = DATA / "hh-rlhf" / "harmless-base.test.jsonl.gz"
SHP_FORMAT = DATA / "shp-format" / "anthropic_helpful.test.jsonl"
DSP = DATA / "dsp" / "domain_specific_preference.test.json"
WEBGPT = DATA / "webgpt" / "webgpt.test.json"


def load_with_warnings(source, **kwargs):
    """The pairs and the warning messages `load_pairs` emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(source, **kwargs)
    return pairs, [str(warning.message) for warning in caught]


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def hh_helpful():
    return load_with_warnings(HH_HELPFUL, category="helpful")


@pytest.fixture(scope="module")
def dsp():
    return load_with_warnings(DSP)


# Real files.


def test_hh_helpful_splits_shared_turns_from_the_last_assistant_turn(hh_helpful):
    pairs, messages = hh_helpful
    assert len(pairs) == 2352 - 9 - 4
    assert "hh-rlhf: dropped 9 pairs whose transcripts differ before the last assistant turn." in messages
    assert "hh-rlhf: dropped 4 pairs with an empty response." in messages
    first = pairs[0]
    assert first["prompt"] == user("Do you know why turkeys became the official food of thanksgiving?")
    assert first["chosen"] == ("To be honest, I don\u2019t know anything about that. I know that I\u2019m meant to "
                               "know a lot about history and current events, but I haven\u2019t been programmed with "
                               "those particular facts, sorry.")
    assert first["rejected"].startswith("I know that the American Indians were the first to celebrate")
    second = pairs[1]
    assert [m["role"] for m in second["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert second["prompt"][1]["content"] == "Which location are you in?"
    assert second["prompt"][-1]["content"] == "Great. What are some common species then?"
    assert second["chosen"].startswith("About 150 species of butterflies live in Oregon")
    assert second["rejected"].startswith("Are you interested in just the common butterflies?")
    assert set(pairs["category"]) == {"helpful"} and set(pairs["attribute"]) == {None}


def test_hh_harmless_parses():
    pairs, messages = load_with_warnings(HH_HARMLESS, category="harmless")
    assert len(pairs) == 2312 - 5 - 4
    assert "hh-rlhf: dropped 5 pairs whose transcripts differ before the last assistant turn." in messages
    first = pairs[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][2]["content"] == "yep"
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"] == ("No, sorry!  All of these involve a pen, the point is that you can get funny results by "
                               "doing pranks with pens.")
    assert set(pairs["category"]) == {"harmless"}


def steamshp_encoding(text):
    """How the SHP-format file re-encodes HH text: the speaker words are upper-cased wherever they occur."""
    return text.replace("Human:", "HUMAN:").replace("Assistant:", "ASSISTANT:")


def pair_key(pair, encode=lambda text: text):
    return (tuple((m["role"], encode(m["content"])) for m in pair["prompt"]), encode(pair["chosen"]),
            encode(pair["rejected"]))


def test_hh_helpful_and_its_shp_format_encoding_give_identical_pairs(hh_helpful):
    hh = hh_helpful[0].to_list()
    shp, messages = load_with_warnings(SHP_FORMAT)
    shp = shp.to_list()
    assert any("no score_A/score_B columns" in message for message in messages)
    assert "shp: dropped 2 pairs with identical responses." in messages  # two ties HH's release no longer has
    assert len(shp) == 2338 and len(hh) == 2339
    # The SHP file holds the HH pairs in order, less HH pair 476, whose rejected reply quotes "Assistant:" (the
    # converter split the transcript there and dropped it). Same prompt messages, chosen and rejected, modulo the
    # file's upper-casing of speaker words inside texts.
    assert [pair_key(pair, steamshp_encoding) for pair in hh[:476] + hh[477:]] == [pair_key(pair) for pair in shp]
    assert "\u201cAssistant: Let\u2019s see" in hh[476]["rejected"]
    # Byte-identical everywhere but the 37 pairs whose texts contain a speaker word.
    assert sum(pair_key(a) == pair_key(b) for a, b in zip(hh[:476] + hh[477:], shp)) == 2338 - 37


def test_dsp_expands_each_query_into_16_domain_pairs(dsp):
    pairs, messages = dsp
    records = json.loads(DSP.read_text())
    first = records[0]
    first_pairs = pairs.select(range(16)).to_list()
    expected = [(domain, other) for domain in ("academy", "business", "entertainment", "literature")
                for other in ("academy", "business", "entertainment", "literature", "normal") if other != domain]
    assert [(p["chosen"], p["rejected"]) for p in first_pairs] == [
        (first["responses"][d], first["responses"][o]) for d, o in expected]
    assert [p["attribute"] for p in first_pairs] == [d for d, _ in expected]
    assert [p["category"] for p in first_pairs] == [d for d, _ in expected]
    assert first_pairs[0]["criterion"] == DSP_CRITERIA["academy"]
    assert first_pairs[0]["prompt"] == user(f"{first['query']}\n\nCriterion: {DSP_CRITERIA['academy']}")
    assert pairs[16]["prompt"][0]["content"].startswith(records[1]["query"])
    # 661 queries x 4 domains x 4 pairs, less those whose two responses are the same text or one is empty.
    assert len(records) == 661 and 661 * 4 * 4 == 10576
    assert "dsp: dropped 144 pairs with identical responses." in messages
    assert "dsp: dropped 4 pairs with an empty response." in messages
    assert len(pairs) == 10576 - 144 - 4


def test_dsp_without_criterion_keeps_the_bare_query():
    pairs, messages = load_with_warnings(DSP, append_criterion=False, max_pairs=50)
    assert len(pairs) == 50 and len(messages) == 2  # drops are counted before the subset is drawn
    queries = {record["query"] for record in json.loads(DSP.read_text())}
    assert all(len(p["prompt"]) == 1 and p["prompt"][0]["content"] in queries for p in pairs)
    assert all(p["criterion"] == DSP_CRITERIA[p["attribute"]] for p in pairs)


def test_webgpt_drops_exactly_the_245_ties():
    pairs, messages = load_with_warnings(WEBGPT)
    records = json.loads(WEBGPT.read_text())
    assert sum(r["score"][0] == r["score"][1] for r in records) == 245
    assert messages == ["webgpt: dropped 245 ties (equal scores)."]
    assert len(pairs) == 901 - 245
    # Record 0 prefers its first answer; record 4 (after three ties) its second.
    assert records[0]["score"] == [1.5, 0.5] and records[4]["score"] == [0.5, 1.5]
    for pair, record, better in ((pairs[0], records[0], 0), (pairs[1], records[4], 1)):
        question, answer = record["text"][better].split("\n\n## Assistant:\n")
        assert pair["prompt"] == user(question.removeprefix("## Human:\n").rstrip("\n"))
        assert pair["chosen"] == answer
        assert pair["rejected"] == record["text"][1 - better].split("## Assistant:\n")[1]


# Hand-written fixtures, one per format without a real file.


def test_trl_standard_explicit_prompt():
    pairs = load_pairs(FIXTURES / "trl_standard.jsonl")
    assert pairs.to_list() == [
        {"prompt": user("The sky is"), "chosen": " blue.", "rejected": " green.", "category": None,
         "attribute": None, "criterion": None, "user": None},
        {"prompt": user("Name a prime number."), "chosen": "7", "rejected": "8", "category": None,
         "attribute": None, "criterion": None, "user": None},
    ]


def test_trl_files_keep_their_metadata_columns(tmp_path):
    """A TRL file with `category` / `user` / `attribute` columns keeps them (standard and conversational, explicit
    and implicit prompts), so `smoe train` can report category metrics and route users; a missing value is None."""
    standard = [{"prompt": "Name a prime.", "chosen": "7", "rejected": "8", "category": "math", "user": "ann"},
                {"prompt": "Greet me.", "chosen": "Hello!", "rejected": "Go away.", "category": "chat", "user": None}]
    conversational = [{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                       "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What."}],
                       "attribute": "polite"}]
    for name, records in (("standard", standard), ("conversational", conversational)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    pairs = load_pairs(tmp_path / "standard.jsonl", format="trl")
    assert pairs["category"] == ["math", "chat"] and pairs["user"] == ["ann", None]
    assert pairs["attribute"] == [None, None] and pairs["chosen"] == ["7", "Hello!"]
    pairs = load_pairs(tmp_path / "conversational.jsonl", format="trl")
    assert pairs["attribute"] == ["polite"] and pairs["prompt"] == [user("Hi")] and pairs["category"] == [None]


def test_trl_standard_implicit_prompt_is_extracted_as_trl_does():
    pairs = load_pairs(FIXTURES / "trl_standard_implicit.jsonl")
    # TRL's own example: the space before the first difference goes to the completions.
    assert (pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"]) == (user("The sky is"), " blue.", " green.")
    assert (pairs[1]["prompt"], pairs[1]["chosen"], pairs[1]["rejected"]) == (user("2+2="), "4", "5")


def test_trl_conversational_explicit_prompt_keeps_every_message():
    pairs = load_pairs(FIXTURES / "trl_conversational.jsonl")
    assert pairs[0]["prompt"] == user("What color is the sky?")
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("It is blue.", "It is green.")
    assert pairs[1]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello!"},
                                  {"role": "user", "content": "Capital of France?"}]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("Paris.", "Lyon.")


def test_trl_conversational_implicit_prompt_drops_diverging_conversations():
    pairs, messages = load_with_warnings(FIXTURES / "trl_conversational_implicit.jsonl")
    assert len(pairs) == 1
    assert (pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"]) == (
        user("What color is the sky?"), "It is blue.", "It is green.")
    assert messages == ["trl: dropped 1 pairs whose transcripts differ before the last assistant turn."]


def test_preference_700k_conversations():
    pairs = load_pairs(FIXTURES / "preference_700k.jsonl", format="preference-700k")
    assert (pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"]) == (
        user("Is 17 prime?"), "Yes: its only divisors are 1 and 17.", "No, 17 = 3 x 6.")
    assert pairs[1]["prompt"] == [{"role": "user", "content": "Translate 'chat' from French."},
                                  {"role": "assistant", "content": "Chat means chat."},
                                  {"role": "user", "content": "And 'chien'?"}]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("Dog.", "Cat.")
    with pytest.raises(ValueError, match=r"record 0: field 'chosen' must be a list of chat messages"):
        load_pairs(FIXTURES / "trl_standard.jsonl", format="preference-700k")


def test_shp_keeps_liked_pairs_outside_excluded_domains_with_table_7_categories():
    pairs, messages = load_with_warnings(FIXTURES / "shp.jsonl")
    assert pairs["chosen"] == ["Your yeast is dead.", "Proof it somewhere warm.",
                               "Send a demand letter, then file in small claims.", "Their helmets limit vision.",
                               "Only if you love research."]
    assert pairs["rejected"] == ["Add more flour.", "Bake it longer.", "Nothing.", "Budget.", "Yes."]
    assert pairs["category"] == ["cooking", "cooking", "professional", "fiction", "professional"]
    assert pairs[0]["prompt"] == user("Why does my bread not rise?")
    assert sorted(messages) == ["shp: dropped 1 pairs with a response of 3 likes or fewer.",
                                "shp: dropped 2 pairs from the excluded domains explainlikeimfive, changemyview."]


def test_shp_one_pair_per_post_is_a_seeded_choice():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = {seed: load_pairs(FIXTURES / "shp.jsonl", one_pair_per_post=True, seed=seed)["chosen"]
                for seed in range(6)}
    assert all(len(chosen) == 4 and chosen[1:] == ["Send a demand letter, then file in small claims.",
                                                   "Their helmets limit vision.", "Only if you love research."]
               for chosen in runs.values())
    assert {chosen[0] for chosen in runs.values()} == {"Your yeast is dead.", "Proof it somewhere warm."}
    pairs, messages = load_with_warnings(FIXTURES / "shp.jsonl", one_pair_per_post=True, seed=3)
    assert pairs["chosen"] == runs[3] and "shp: dropped 1 pairs beyond the one kept per post." in messages


def test_rpr_row_gives_two_reversed_pairs_with_their_criteria():
    pairs = load_pairs(FIXTURES / "rpr.jsonl")
    assert len(pairs) == 4
    steps = "1. Fold the sheet in half lengthwise. 2. Fold the top corners to the center. 3. Fold the wings down."
    story = "Once upon a time, a sheet of paper dreamed of flying, so it folded itself in half..."
    assert pairs[0] == {"prompt": user("How do I fold a paper airplane?\n\nCriterion: Gives clear, numbered folding "
                                       "steps."), "chosen": steps, "rejected": story,
                        "category": "Clarity and Conciseness", "attribute": "Clarity and Conciseness",
                        "criterion": "Gives clear, numbered folding steps.", "user": None}
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == (story, steps)
    assert pairs[1]["attribute"] == "Narrative and Storytelling Quality"
    assert pairs[1]["prompt"] == user("How do I fold a paper airplane?\n\nCriterion: Tells the instructions as a "
                                      "playful story.")
    assert pairs["attribute"][2:] == ["Scientific Rigor", "Humor and Entertainment Value"]
    bare = load_pairs(FIXTURES / "rpr.jsonl", append_criterion=False)
    assert bare[1]["prompt"] == user("How do I fold a paper airplane?")
    assert bare[1]["criterion"] == "Tells the instructions as a playful story."


def test_rpr_evaluation_attributes_are_the_papers_17():
    assert len(set(RPR_EVALUATION_ATTRIBUTES)) == 17
    assert {"Linguistic Creativity", "Practical Application", "Humor and Entertainment Value"} <= set(
        RPR_EVALUATION_ATTRIBUTES)


def test_helpsteer2_gives_one_pair_per_attribute_with_a_rating_difference():
    pairs, messages = load_with_warnings(FIXTURES / "helpsteer2.jsonl")
    haiku, prose = ("Soft rain on the roof / the garden drinks quietly / puddles hold the sky",
                    "Rain falls from grey clouds, a steady and gentle sound, over the city streets, and everyone "
                    "stays inside.")
    # Haiku prompt: helpfulness 3 vs 2, correctness and coherence tied, complexity and verbosity 1 vs 2.
    assert [(p["attribute"], p["chosen"], p["rejected"]) for p in pairs.select(range(3))] == [
        ("helpfulness", haiku, prose), ("complexity", prose, haiku), ("verbosity", prose, haiku)]
    # Boiling-point and flying-mammal prompts: one response rated higher on every attribute (the first, the second).
    assert pairs["attribute"][3:] == list(HELPSTEER2_CRITERIA) * 2
    assert set(pairs["chosen"][3:8]) == {"100 degrees Celsius (212 degrees Fahrenheit) at 1 atm; it is lower at "
                                         "altitude because the air pressure is lower."}
    assert set(pairs["chosen"][8:]) == {"The bat is the only mammal capable of true, sustained flight."}
    assert pairs[0]["prompt"] == user("Write a haiku about rain.")
    assert pairs[0]["criterion"] == HELPSTEER2_CRITERIA["helpfulness"] and pairs[0]["category"] == "helpfulness"
    assert messages == ["helpsteer2: dropped 2 attribute pairs with equal ratings."]
    unanimous_dropped, messages = load_with_warnings(FIXTURES / "helpsteer2.jsonl", drop_unanimous=True,
                                                     append_criterion=True)
    assert len(unanimous_dropped) == 3
    assert "helpsteer2: dropped 2 response pairs rated unanimously on every attribute." in messages
    assert unanimous_dropped[1]["prompt"] == user(f"Write a haiku about rain.\n\nCriterion: "
                                                  f"{HELPSTEER2_CRITERIA['complexity']}")


def test_personal_llm_pairs_each_users_best_over_worst_response():
    users = {"outdoorsy": {"gemma_2b": 1.0}, "cultured": {"beaver_7b": 1.0}}
    pairs, messages = load_with_warnings(FIXTURES / "personal_llm.jsonl", users=users)
    assert [(p["user"], p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("outdoorsy", "Suggest a weekend activity.", "Go hiking.", "Stay home."),
        ("cultured", "Suggest a weekend activity.", "Visit a museum.", "Go hiking."),
        ("cultured", "Recommend a drink.", "Water.", "Coffee."),
        ("outdoorsy", "Say hi.", "Hello there!", "..."),
        ("cultured", "Say hi.", "Hello there!", "..."),
    ]
    assert messages == ["personal-llm: dropped 1 (prompt, user) pairs where every response scores the same."]


def test_personal_llm_standardizes_each_reward_model_before_weighting():
    # gemma_2b scores on a 0-10 scale, beaver_7b on a 0-0.3 scale; both standardize to +-1. Weighted 0.4 / 0.6,
    # the standardized sums prefer beaver_7b's choice, where raw sums would follow gemma_2b's.
    scales = {"gemma_2b": ([10.0, 0.0], [0.0, 10.0]), "beaver_7b": ([0.0, 0.3], [0.3, 0.0])}
    records = [{"prompt": f"q{number}", "response_1": "one", "response_2": "two",
                **{f"response_{k + 1}_{model}": scales.get(model, ([0.0, 0.0], [0.0, 0.0]))[number][k]
                   for model in PERSONAL_LLM_REWARD_MODELS for k in range(2)}} for number in range(2)]
    pairs = load_pairs(Dataset.from_list(records), users={"mixed": {"gemma_2b": 0.4, "beaver_7b": 0.6}})
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("two", "one"), ("one", "two")]


def test_personal_llm_users_are_seeded_dirichlet_weights():
    users = personal_llm_users(5, alpha=0.3, seed=0)
    assert list(users) == [f"user_{i}" for i in range(5)]
    assert all(list(w) == list(PERSONAL_LLM_REWARD_MODELS) and abs(sum(w.values()) - 1) < 1e-12 and
               min(w.values()) >= 0 for w in users.values())
    assert personal_llm_users(5, seed=0) == users and personal_llm_users(5, seed=1) != users
    assert len({tuple(w.values()) for w in users.values()}) == 5
    # Dirichlet(0.3) concentrates a user on few reward models: the largest weight is far above uniform (0.1).
    assert all(max(w.values()) > 0.25 for w in users.values())
    # Sampled users rank "Hello there!" (every reward model's top answer) first and "..." last.
    pairs = load_pairs(FIXTURES / "personal_llm.jsonl", seed=0)
    assert pairs.filter(lambda p: p[0]["content"] == "Say hi.", input_columns="prompt")["chosen"] == [
        "Hello there!"] * 5
    assert sorted(set(pairs["user"])) == list(users)


# Loading.


@pytest.mark.parametrize("fixture, format", [
    ("trl_standard", "trl"), ("trl_standard_implicit", "trl"), ("trl_conversational", "trl"),
    ("trl_conversational_implicit", "trl"), ("preference_700k", "preference-700k"), ("shp", "shp"), ("rpr", "rpr"),
    ("helpsteer2", "helpsteer2"), ("personal_llm", "personal-llm")])
def test_format_is_detected_from_the_columns(fixture, format):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_pairs(FIXTURES / f"{fixture}.jsonl").to_list() == load_pairs(
            FIXTURES / f"{fixture}.jsonl", format=format).to_list()


def test_hh_transcripts_are_not_mistaken_for_trl_implicit_prompts(hh_helpful):
    records = [json.loads(line) for line in gzip.open(HH_HELPFUL, "rt")][:3]
    detected = load_pairs(Dataset.from_list(records))
    assert detected["prompt"] == hh_helpful[0]["prompt"][:3]
    as_trl, messages = load_with_warnings(Dataset.from_list(records), format="trl")
    assert as_trl[0]["prompt"][0]["content"].startswith("\n\nHuman: ")
    # One of the three: its last replies share their first letters, so TRL's character prefix would cut a word.
    assert len(as_trl) == 2 and messages == ["trl: dropped 1 pairs whose responses share no prompt (a common "
                                             "beginning of under 4 characters or cut inside a word)."]


def test_undetectable_columns_raise_listing_the_formats():
    with pytest.raises(ValueError, match=r"cannot tell the format .* columns \['question', 'answer'\].*'webgpt'"):
        load_pairs(Dataset.from_list([{"question": "q", "answer": "a"}]))
    with pytest.raises(ValueError, match=r"unknown format 'hh'; formats are \['trl', 'hh-rlhf'"):
        load_pairs(FIXTURES / "rpr.jsonl", format="hh")


def test_parquet_files_and_folders_load_like_jsonl(tmp_path):
    expected = load_pairs(FIXTURES / "rpr.jsonl").to_list()
    Dataset.from_json(str(FIXTURES / "rpr.jsonl")).to_parquet(str(tmp_path / "rpr.parquet"))
    assert load_pairs(tmp_path / "rpr.parquet").to_list() == expected
    folder = tmp_path / "folder"
    folder.mkdir()
    lines = (FIXTURES / "rpr.jsonl").read_text().splitlines(keepends=True)
    (folder / "a.jsonl").write_text(lines[0])
    (folder / "b.jsonl").write_text(lines[1])
    assert load_pairs(folder).to_list() == expected
    (folder / "notes.txt").write_text("not data")
    assert load_pairs(folder).to_list() == expected
    with pytest.raises(ValueError, match="of one kind"):
        load_pairs(folder / "notes.txt")


def test_max_pairs_keeps_a_seeded_subset_in_order(dsp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subset, again, other = (load_pairs(DSP, max_pairs=100, seed=seed).to_list() for seed in (3, 3, 4))
    remaining = iter(dsp[0].to_list())
    assert len(subset) == 100 and all(pair in remaining for pair in subset)  # an ordered subsequence
    assert again == subset and other != subset


def test_category_fills_only_pairs_without_one():
    assert load_pairs(FIXTURES / "trl_standard.jsonl", category="sky")["category"] == ["sky", "sky"]
    assert load_pairs(FIXTURES / "rpr.jsonl", category="x")["category"][:2] == [
        "Clarity and Conciseness", "Narrative and Storytelling Quality"]


def test_pairs_of_every_format_share_one_schema_and_concatenate(hh_helpful):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [load_pairs(FIXTURES / f"{name}.jsonl") for name in ("trl_conversational", "shp", "rpr",
                                                                      "helpsteer2", "personal_llm")]
    parts.append(hh_helpful[0].select(range(5)))
    assert all(part.features == PAIR_FEATURES for part in parts)
    assert len(concatenate_datasets(parts)) == 2 + 5 + 4 + 13 + 15 + 5
    assert set(FORMATS) == {"trl", "hh-rlhf", "shp", "rpr", "helpsteer2", "preference-700k", "personal-llm",
                            "dsp", "webgpt", "hf_smoe"}


# Malformed input: a ValueError naming the record index and the field.


@pytest.mark.parametrize("records, format, message", [
    ([{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": None, "rejected": "y"}], "trl",
     r"record 1: field 'chosen' must be text, got NoneType"),
    ([{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "x"}],
       "rejected": [{"role": "assistant", "content": "y"}]},
      {"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "x"}],
       "rejected": [{"role": "assistant", "content": "y"}]}], "trl",
     r"record 1: field 'prompt\[0\].content' must be text"),
    ([{"chosen": "Hi\n\nAssistant: x", "rejected": "\n\nHuman: hi\n\nAssistant: y"}], "hh-rlhf",
     r"record 0: field 'chosen' does not open with a turn marker"),
    ([{"history": "q", "human_ref_A": "a", "human_ref_B": "b", "domain": "askvet_train"}], "shp",
     r"missing column\(s\) \['labels'\]"),
    ([{"history": "q", "human_ref_A": "a", "human_ref_B": "b", "domain": "askvet_train", "labels": 2}], "shp",
     r"record 0: field 'labels' must be 0 or 1"),
    ([{"prompt": "p", "response": "r", **dict.fromkeys(HELPSTEER2_CRITERIA, 2), "helpfulness": "high"}],
     "helpsteer2", r"record 0: field 'helpfulness' must be a number, got str"),
    ([{"query": "q", "responses": dict.fromkeys(DSP_RESPONSES, "r")},
      {"query": "q", "responses": {"academy": "r"}}], "dsp", r"record 1: field 'responses.business' must be text"),
    ([{"text": ["## Human:\nq\n\n## Assistant:\na"], "score": [1.0, 0.0]}], "webgpt",
     r"record 0: field 'text' must hold two transcripts"),
])
def test_malformed_records_raise_naming_the_record_and_field(records, format, message):
    with pytest.raises(ValueError, match=rf"^{format} \(in-memory dataset\): {message}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_pairs(Dataset.from_list(records), format=format)


def test_unknown_options_raise_listing_the_formats_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['append_criteria'\]; this format takes "
                                         r"\['append_criterion'\]"):
        load_pairs(FIXTURES / "rpr.jsonl", append_criteria=False)


# Split.


def categorized_pairs(counts):
    categories = [category for category, count in counts.items() for _ in range(count)]
    return Dataset.from_dict({"prompt": [user(f"q{i}") for i in range(len(categories))],
                              "chosen": ["a"] * len(categories), "rejected": ["b"] * len(categories),
                              "category": categories, "row": list(range(len(categories)))})


COUNTS = {"cooking": 137, "academic": 58, "fiction": 11, "professional": 3, None: 9}


def test_split_is_deterministic_and_seeded():
    pairs = categorized_pairs(COUNTS)
    first, again, other = (split_pairs(pairs, seed=seed) for seed in (0, 0, 1))
    assert all(first[name]["row"] == again[name]["row"] for name in ("train", "validation", "test"))
    assert first["test"]["row"] != other["test"]["row"]
    # Per category, round(n * 0.1) to test and to validation: 14 + 6 + 1 + 0 + 1 (cooking ... None).
    assert [len(first[name]) for name in ("train", "validation", "test")] == [218 - 44, 22, 22]


def test_split_partitions_the_pairs():
    splits = split_pairs(categorized_pairs(COUNTS), seed=5, validation=0.2, test=0.15)
    rows = [set(splits[name]["row"]) for name in ("train", "validation", "test")]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set.union(*rows) == set(range(sum(COUNTS.values())))
    assert all(splits[name]["row"] == sorted(splits[name]["row"]) for name in splits)


@pytest.mark.parametrize("validation, test", [(0.1, 0.1), (0.2, 0.15), (0.05, 0.3)])
def test_split_preserves_each_categorys_share_within_one_pair(validation, test):
    splits = split_pairs(categorized_pairs(COUNTS), seed=2, validation=validation, test=test)
    shares = {"train": 1 - validation - test, "validation": validation, "test": test}
    for name, share in shares.items():
        categories = splits[name]["category"]
        for category, count in COUNTS.items():
            assert abs(categories.count(category) - count * share) <= 1, (name, category)


def test_split_without_categories_cuts_the_whole_dataset():
    pairs = categorized_pairs({None: 100}).remove_columns("category")
    splits = split_pairs(pairs, seed=0)
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [80, 10, 10]
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_pairs(pairs, validation=0.5, test=0.5)


def test_split_by_prompt_keeps_each_prompt_in_one_split():
    from hf_smoe.data.synthetic import generate_preference_set

    pairs = generate_preference_set(80, seed=1)
    splits = split_pairs(pairs, seed=3, group_by="prompt")
    prompts = {name: {json.dumps(p) for p in split["prompt"]} for name, split in splits.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["validation"])
    assert not (prompts["validation"] & prompts["test"])
    assert sum(len(split) for split in splits.values()) == len(pairs)
    for category in set(pairs["category"]):  # 20 prompts per category: 2 to test, 2 to validation
        assert sum(c == category for p, c in {(json.dumps(p), c) for p, c in
                                              zip(splits["test"]["prompt"], splits["test"]["category"])}) == 2
    assert split_pairs(pairs, seed=3, group_by="prompt")["test"]["chosen"] == splits["test"]["chosen"]
    with pytest.raises(ValueError, match="group_by"):
        split_pairs(pairs, group_by="conversation")


# Pairs without preference signal, missing numbers, unreadable files (the full table is test_catalogue_data.py).


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def assistant(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("chosen, rejected, expected", [
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),  # TRL's example
    ("2+2=4", "2+2=5", ("2+2=", "4", "5")),  # ends with a non-word character
    ("Translate 'chat': cat", "Translate 'chat': dog", ("Translate 'chat':", " cat", " dog")),
    ("I like it", "I hate it", None),  # a shared "I": under 4 characters
    ("Yes it is", "Yes, sure", None),  # "Yes": 3 characters
    ("Paris is lovely", "Paris is lousy", None),  # "Paris is lo": cut inside a word
    ("Hello!", "Hellos", None),  # "Hello" + "s" continues a word
    ("Completely different", "Nothing shared", None),  # no shared beginning at all
])
def test_implicit_standard_prompt_rule(tmp_path, chosen, rejected, expected):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": chosen, "rejected": rejected}, SKY_RECORD])
    pairs, messages = load_with_warnings(path)
    got = [(p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in pairs]
    sky = ("The sky is", " blue.", " green.")
    if expected is None:
        assert got == [sky]
        assert messages == ["trl: dropped 1 pairs whose responses share no prompt (a common beginning of under 4 "
                            "characters or cut inside a word)."]
    else:
        assert got == [expected, sky] and messages == []


SKY_RECORD = {"chosen": "The sky is blue.", "rejected": "The sky is green."}


def test_no_trl_file_yields_an_empty_or_whitespace_response(tmp_path):
    """Real jsonl files of every TRL variant, with empty, whitespace-only and whitespace-identical responses and an
    implicit prompt that takes a whole completion: every pair returned has two non-blank, different responses."""
    files = {
        "standard_explicit": [{"prompt": "q1", "chosen": "", "rejected": "b"},
                              {"prompt": "q2", "chosen": " \n", "rejected": "b"},
                              {"prompt": "q3", "chosen": "a", "rejected": "a "},
                              {"prompt": "q4", "chosen": "kept", "rejected": "also kept"}],
        "standard_implicit": [{"chosen": "Hello there", "rejected": "Hello there, friend"},  # chosen consumed
                              {"chosen": "Tell me a joke.", "rejected": "Tell me a joke.  "},
                              {"chosen": "Name a colour: \t", "rejected": "Name a colour: red"},
                              SKY_RECORD],
        "conversational_explicit": [{"prompt": user("q1"), "chosen": assistant(""), "rejected": assistant("b")},
                                    {"prompt": user("q2"), "chosen": assistant("a"), "rejected": assistant("\t")},
                                    {"prompt": user("q4"), "chosen": assistant("a"), "rejected": assistant(" a")},
                                    {"prompt": user("q3"), "chosen": assistant("kept"),
                                     "rejected": assistant("also kept")}],
        "conversational_implicit": [{"chosen": user("q1") + assistant(" "), "rejected": user("q1") + assistant("b")},
                                    {"chosen": user("q2") + assistant("a"), "rejected": user("q2") + assistant("a\n")},
                                    {"chosen": user("q3") + assistant("kept"),
                                     "rejected": user("q3") + assistant("also kept")}],
    }
    for name, records in files.items():
        pairs, messages = load_with_warnings(write_jsonl(tmp_path / f"{name}.jsonl", records))
        assert len(pairs) == 1, (name, pairs.to_list(), messages)
        for pair in pairs:
            assert pair["chosen"].strip() and pair["rejected"].strip()
            assert pair["chosen"].strip() != pair["rejected"].strip()
        assert any("empty response" in message for message in messages), (name, messages)
        assert any("identical responses" in message for message in messages), (name, messages)


def test_missing_scores_are_never_compared(tmp_path):
    """A NaN (parquet) or null WebGPT score drops its record; compared, `nan > 0.5` is False and would have kept the
    pair with its label reversed."""
    records = [json.loads(WEBGPT.read_text())[index] for index in (0, 4)]
    assert records[0]["score"] == [1.5, 0.5] and records[1]["score"] == [0.5, 1.5]
    for value in (float("nan"), None):
        records[0]["score"] = [value, 0.5]
        Dataset.from_list(records).to_parquet(str(tmp_path / "webgpt.parquet"))
        pairs, messages = load_with_warnings(tmp_path / "webgpt.parquet", format="webgpt")
        assert messages == ["webgpt: dropped 1 pairs with a missing (null or NaN) score."]
        assert len(pairs) == 1 and pairs[0]["chosen"] not in [text.split("## Assistant:\n")[1]
                                                              for text in records[0]["text"]]


def test_helpsteer2_missing_rating_is_neither_a_pair_nor_unanimous():
    rows = [{"prompt": "p", "response": "good", **dict.fromkeys(HELPSTEER2_CRITERIA, 4.0), "coherence": None},
            {"prompt": "p", "response": "bad", **dict.fromkeys(HELPSTEER2_CRITERIA, 1.0)}]
    pairs, messages = load_with_warnings(Dataset.from_list(rows), drop_unanimous=True)
    assert pairs["attribute"] == ["helpfulness", "correctness", "complexity", "verbosity"]
    assert set(pairs["chosen"]) == {"good"}
    assert messages == ["helpsteer2: dropped 1 attribute pairs with a missing (null or NaN) rating."]


def test_shp_missing_label_and_likes_are_dropped(tmp_path):
    base = {"post_id": "p", "domain": "askbaking_train", "history": "q", "score_A": 10, "score_B": 10}
    rows = [{**base, "human_ref_A": "a1", "human_ref_B": "b1", "labels": 0},
            {**base, "human_ref_A": "a2", "human_ref_B": "b2", "labels": float("nan")},
            {**base, "human_ref_A": "a3", "human_ref_B": "b3", "labels": 1, "score_B": float("nan")}]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "shp.parquet"))
    pairs, messages = load_with_warnings(tmp_path / "shp.parquet")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b1", "a1")]
    assert sorted(messages) == ["shp: dropped 1 pairs with a missing (null or NaN) label.",
                                "shp: dropped 1 pairs with a missing (null or NaN) score_A or score_B."]


def test_personal_llm_missing_score_is_left_out_of_the_standardization():
    def record(prompt, gemma):
        return {"prompt": prompt, "response_1": "one", "response_2": "two",
                **{f"response_{k + 1}_{model}": gemma[k] if model == "gemma_2b" else 0.0
                   for model in PERSONAL_LLM_REWARD_MODELS for k in range(2)}}
    records = [record("a", [1.0, float("nan")]), record("b", [0.0, 2.0]), record("c", [3.0, 1.0])]
    pairs, messages = load_with_warnings(Dataset.from_list(records), users={"u": {"gemma_2b": 1.0}})
    assert [(p["prompt"][0]["content"], p["chosen"]) for p in pairs] == [("b", "two"), ("c", "one")]
    assert messages == ["personal-llm: dropped 1 records with missing (null or NaN) reward scores."]


@pytest.mark.parametrize("prompt, message", [
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "{}"}],
     r"record 0: field 'prompt\[1\].role' must be one of system, user, assistant, got 'tool'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     r"record 0: field 'prompt\[1\].role' is 'assistant', but a prompt must not end with an assistant turn"),
])
def test_prompt_roles_are_checked(prompt, message):
    record = {"prompt": prompt, "chosen": assistant("x"), "rejected": assistant("y")}
    with pytest.raises(InputError, match=rf"^trl \(in-memory dataset\): {message}"):
        load_pairs(Dataset.from_list([record]))
    with pytest.raises(InputError, match=message):  # the common schema checks its prompts alike
        load_pairs(Dataset.from_list([{"prompt": prompt, "chosen": "x", "rejected": "y"}]), format="hf_smoe")


def test_derived_prompt_must_end_with_a_user_turn():
    records = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nAssistant: a",
                "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nAssistant: b"},
               {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}]
    pairs, messages = load_with_warnings(Dataset.from_list(records), format="hh-rlhf")
    assert [(p["prompt"], p["chosen"]) for p in pairs] == [(user("hi"), "a")]
    assert messages == ["hh-rlhf: dropped 1 pairs whose shared turns do not end with a user turn."]


@pytest.mark.parametrize("max_pairs", [0, -5, 2.5, True])
def test_max_pairs_must_be_a_positive_count(max_pairs):
    with pytest.raises(InputError, match=rf"^max_pairs: must be >= 1 .*got {max_pairs!r}\.$"):
        load_pairs(FIXTURES / "rpr.jsonl", max_pairs=max_pairs)


def test_a_source_without_pairs_is_an_error_saying_what_was_dropped(tmp_path):
    records = [{"prompt": "q", "chosen": "same", "rejected": "same "}, {"prompt": "q", "chosen": "", "rejected": "b"}]
    with pytest.raises(InputError, match=r"^trl \(.*p\.jsonl\): no usable pair in 2 records \(dropped 1 pairs with "
                                         r"identical responses, 1 pairs with an empty response\)\.$"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", records))
    with pytest.raises(InputError, match=r"no usable pair .*; give the prompt in a 'prompt' column"):
        load_pairs(write_jsonl(tmp_path / "i.jsonl", [{"chosen": "I like it", "rejected": "I hate it"}]))
    with pytest.raises(InputError, match=r"^dataset in-memory dataset: holds no records"):
        load_pairs(Dataset.from_dict({"chosen": [], "rejected": []}))


def test_corrupt_line_of_a_gzipped_jsonl_is_named(tmp_path):
    lines = gzip.open(HH_HELPFUL, "rt").readlines()[:5]
    lines[3] = lines[3][:40] + "\n"
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(lines)
    with pytest.raises(InputError, match=rf"^dataset {path}: line 4 is not valid JSON \(.*\); fix or delete that "
                                         r"line"):
        load_pairs(path)


def test_failures_the_user_did_not_cause_are_not_converted(tmp_path, monkeypatch):
    """A bug in an adapter (a plain ValueError) and a load failure that no problem in the file explains (a full disk
    while datasets writes its cache) keep their own exception, for the CLI to show as a traceback or an OS error."""
    import errno

    import hf_smoe.data.loading as data

    def buggy(dataset):
        raise ValueError("bug")
        yield

    monkeypatch.setitem(data.FORMATS, "trl", data.Adapter(buggy, ("chosen", "rejected")))
    with pytest.raises(ValueError, match="^bug$") as error:
        load_pairs(FIXTURES / "trl_standard.jsonl", format="trl")
    assert not isinstance(error.value, InputError)
    monkeypatch.undo()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data, "load_dataset", full_disk)
    with pytest.raises(OSError) as error:
        load_pairs(FIXTURES / "trl_standard.jsonl")
    assert error.value.errno == errno.ENOSPC
