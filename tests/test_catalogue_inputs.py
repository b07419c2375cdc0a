"""The failure catalogue of what users feed the commands: YAML recipes, data in another format than the one forced
and files without rows, odd text (NUL bytes, 1 MB responses, right-to-left and emoji text, blank prompts, the chat
template's own turn markers) through training, evaluation and `smoe_reward`, checkpoints saved without their
tokenizer, the max length a checkpoint was trained at, and label and user columns with odd values.

Every case runs on a tiny backbone and a checkpoint `smoe train` wrote at a short max length (`world()`); each copies
what it damages. Rewards are checked against the model run on token ids built by hand from the chat template.
"""

import functools
import gzip
import json
import math
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pandas
import pyarrow
import pyarrow.parquet
import torch
from catalogue import Case, check_case, parametrize, run_cli
from datasets import Dataset
from safetensors.torch import load_file

from hf_smoe.data import load_pairs
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.features import EmbeddingCache
from hf_smoe.features.encoding import render_ids
from hf_smoe.personalization.routers import save_router, set_router
from hf_smoe.rewards import smoe_reward
from hf_smoe.runtime import load_checkpoint
from hf_smoe.testing import save_tiny_backbone, save_tiny_causal_lm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_HELPFUL = DATA / "hh-rlhf" / "helpful-base.test.jsonl.gz"
SHP_FORMAT = DATA / "shp-format" / "anthropic_helpful.test.jsonl"
SHORT = 32  # the checkpoint's training max_length: every synthetic pair (34 to 75 tokens) is cut at it
PROMPT = "hello how are you"
TURN_MARKERS = "<|im_end|>\n<|im_start|>assistant\n"  # the ChatML opener of an assistant turn
NAN = float("nan")


@functools.cache
def world() -> dict:
    """A tiny backbone, the labelled pairs of 40 prompts, a checkpoint `smoe train` wrote at max_length SHORT (its
    training features in `cache`), a router for it, and a tiny causal LM to describe its experts."""
    root = Path(tempfile.mkdtemp(prefix="smoe-inputs-"))
    backbone = save_tiny_backbone(root / "backbone", "llama")
    pairs = generate_preference_set(40, seed=2)
    pairs.to_json(root / "pairs.jsonl")
    trained = run_cli("train", "--dataset", root / "pairs.jsonl", "--backbone", backbone, "--max-length", SHORT,
                      "--epochs", 1, "--num-experts", 3, "--cache-dir", root / "cache", "--output-dir", root / "short")
    assert trained.code == 0, trained.stderr[-2000:]
    model, tokenizer = load_checkpoint(root / "short")
    router = type(model.head.router)(model.config)
    with torch.no_grad():
        for parameter in router.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(1))
    save_router(router, root / "router.safetensors", model)
    return {"backbone": backbone, "pairs": root / "pairs.jsonl", "checkpoint": root / "short",
            "cache": root / "cache", "tokenizer": tokenizer, "router": root / "router.safetensors",
            "pair_count": len(pairs), "reward": smoe_reward(root / "short"), "lm": save_tiny_causal_lm(root / "lm")}


# Recipes.


def recipe(text, name: str = "recipe.yaml"):
    """A function writing `text` (or `text()`, made when the case runs) as tmp_path/name and returning its path."""
    def write(tmp_path):
        (tmp_path / name).write_text(text() if callable(text) else text)
        return tmp_path / name
    return write


def eval_recipe(*lines: str):
    """The text of an eval recipe on the world's checkpoint and pairs, plus `lines`, made when called."""
    def text():
        w = world()
        return "".join(f"{line}\n" for line in (f"checkpoint: {w['checkpoint']}", f"dataset: {w['pairs']}",
                                                f"cache_dir: {w['cache']}", *lines))
    return text


def eval_with(write, *flags):
    """`smoe eval --config RECIPE FLAGS` with the recipe `write(tmp_path)` writes."""
    return lambda tmp_path: run_cli("eval", "--config", write(tmp_path), *flags)


def written_results(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / name).read_text())


def succeeded(result) -> None:
    """For checks of (CLI result, ...) outcomes, which `check_case` does not see as CLI results."""
    assert result.code == 0, result.stderr[-2000:]


def dashed_recipe_and_flags(tmp_path):
    """The same evaluation from a recipe with dashed keys and from underscored flags."""
    recipe(eval_recipe("max-pairs: 20", f"output: {tmp_path / 'recipe.json'}"))(tmp_path)
    by_recipe = run_cli("eval", "--config", tmp_path / "recipe.yaml")
    w = world()
    by_flags = run_cli("eval", w["checkpoint"], "--dataset", w["pairs"], "--cache_dir", w["cache"], "--max_pairs", 20,
                       "--output", tmp_path / "flags.json")
    assert by_flags.code == 0, by_flags.stderr[-2000:]
    return by_recipe, tmp_path


def check_same_results(outcome):
    result, tmp_path = outcome
    succeeded(result)
    by_recipe, by_flags = (written_results(tmp_path, name) for name in ("recipe.json", "flags.json"))
    assert by_recipe["results"] == by_flags["results"] and by_recipe["results"]["pairs"] == 20
    assert by_recipe["job"]["max_pairs"] == 20


def flag_beats_recipe(tmp_path):
    recipe(eval_recipe("max_pairs: 10", "seed: 5", f"output: {tmp_path / 'e.json'}"))(tmp_path)
    return run_cli("eval", "--config", tmp_path / "recipe.yaml", "--max-pairs", 24), tmp_path


def check_flag_won(outcome):
    result, tmp_path = outcome
    succeeded(result)
    written = written_results(tmp_path, "e.json")
    assert written["results"]["pairs"] == 24 and written["job"]["max_pairs"] == 24
    assert written["job"]["seed"] == 5  # the recipe's other values still hold


def recipe_null(tmp_path):
    recipe(eval_recipe("max_pairs: null", "seed: null", f"output: {tmp_path / 'e.json'}"))(tmp_path)
    return run_cli("eval", "--config", tmp_path / "recipe.yaml"), tmp_path


def check_defaults_kept(outcome):
    result, tmp_path = outcome
    succeeded(result)
    written = written_results(tmp_path, "e.json")
    assert written["results"]["pairs"] == world()["pair_count"]
    assert written["job"]["max_pairs"] is None and written["job"]["seed"] == 0


RECIPE_CASES = [
    Case("recipe with a key given twice", "error", "key 'seed' appears twice, on lines 4 and 5",
         eval_with(recipe(eval_recipe("seed: 1", "seed: 2")))),
    Case("recipe with max-pairs and max_pairs", "error", "keys 'max-pairs' and 'max_pairs' set the same flag",
         eval_with(recipe(eval_recipe("max-pairs: 5", "max_pairs: 7")))),
    Case("recipe with dashed keys runs like underscored flags", "handled", "", dashed_recipe_and_flags,
         check_same_results),
    Case("a flag on the command line beats the recipe's value", "handled", "", flag_beats_recipe, check_flag_won),
    Case("recipe null keeps the flag's default", "handled", "", recipe_null, check_defaults_kept),
    Case("recipe list for a one-value flag", "error", "max_pairs takes one value, got a list",
         eval_with(recipe(eval_recipe("max_pairs: [1, 2]")))),
    Case("recipe mapping for a text flag", "error", "dataset takes one value, got a mapping",
         eval_with(recipe("checkpoint: c\ndataset: {path: d.jsonl}\n"))),
    Case("recipe text for an integer flag", "error", "--max_pairs/--max-pairs: invalid int value: 'ten'",
         eval_with(recipe(eval_recipe("max_pairs: ten")))),
    Case("recipe float for an integer flag", "error", "--seed: invalid int value: '3.7'",
         eval_with(recipe(eval_recipe("seed: 3.7")))),
    Case("recipe 'maybe' for a yes/no flag", "error", "--overwrite: truthy value expected: got maybe",
         eval_with(recipe(eval_recipe("overwrite: maybe")))),
    Case("empty recipe file", "error", "the file is empty", eval_with(recipe(""))),
    Case("recipe of comments only", "error", "the file is empty", eval_with(recipe("# max_pairs: 5\n"))),
    Case("recipe of one YAML text", "error", "expected a mapping of flag names to values, got str",
         eval_with(recipe("eval everything\n"))),
    Case("recipe is a folder", "error", "is a folder; give the YAML file",
         lambda t: (t / "recipes.yaml").mkdir() or run_cli("steer", t / "recipes.yaml")),
    Case("recipe not in UTF-8", "error", "not UTF-8 text",
         lambda t: (t / "r.yaml").write_bytes("dataset: Grüße.jsonl\n".encode("utf-16")) and run_cli(
             "embed", "--config", t / "r.yaml")),
    Case("recipe with a key of another command", "error", "'num_experts' is a flag of `smoe demo`, `smoe train`",
         eval_with(recipe(eval_recipe("num_experts: 3")))),
    Case("recipe with a misspelt key", "error", "'outptu': did you mean 'output'?",
         lambda t: run_cli("adapt", recipe(lambda: f"checkpoint: {world()['checkpoint']}\noutptu: r\n")(t))),
]


# Data in another format than the one forced, and files without rows.


def jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def hh_records(count: int = 4) -> list:
    with gzip.open(HH_HELPFUL, "rt") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def eval_on(write, *flags):
    """`smoe eval` of the world's checkpoint on the file `write(tmp_path)` returns, with `flags`."""
    def run(tmp_path):
        w = world()
        return run_cli("eval", w["checkpoint"], "--dataset", write(tmp_path), "--cache-dir", w["cache"],
                       "--output", tmp_path / "e.json", *flags)
    return run


def zero_row_parquet(tmp_path):
    table = pyarrow.table({name: pyarrow.array([], pyarrow.string()) for name in ("prompt", "chosen", "rejected")})
    pyarrow.parquet.write_table(table, tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


def parquet_named_jsonl(tmp_path):
    Dataset.from_list(hh_records()).to_parquet(str(tmp_path / "hh.jsonl"))
    return tmp_path / "hh.jsonl"


def text(name: str, content: str):
    def write(tmp_path):
        (tmp_path / name).write_text(content)
        return tmp_path / name
    return write


def trl_text_pairs(tmp_path):
    return jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])


def hh_as_trl(tmp_path):
    return load_pairs(jsonl(tmp_path / "hh.jsonl", hh_records()), format="trl")


def check_hh_as_trl(pairs):
    """TRL's implicit prompt: the transcripts' common beginning, as one user message; prompt + response is the whole
    chosen transcript, nothing lost."""
    records = hh_records()
    assert len(pairs) >= 3
    for pair in pairs:
        record = next(r for r in records if r["chosen"].endswith(pair["chosen"]))
        assert pair["prompt"][0]["content"] + pair["chosen"] == record["chosen"]
        assert pair["prompt"][0]["content"] + pair["rejected"] == record["rejected"]


SHP_RECORD = {"post_id": "p", "domain": "askbaking_train", "history": "Why is my bread flat?", "human_ref_A": "Yeast.",
              "human_ref_B": "Salt.", "score_A": 10, "score_B": 10}


def shp_rows(*labels) -> list:
    return [dict(SHP_RECORD, human_ref_A=f"Yeast {i}.", labels=label) for i, label in enumerate(labels)]


def shp_file(records, name: str = "shp.jsonl"):
    def write(tmp_path):
        if name.endswith(".parquet"):
            Dataset.from_list(records).to_parquet(str(tmp_path / name))
            return tmp_path / name
        return jsonl(tmp_path / name, records)
    return write


def label_missing_in_one_record(tmp_path):
    records = shp_rows(1, 0)
    del records[1]["labels"]
    return load_pairs(jsonl(tmp_path / "shp.jsonl", records))


def check_first_pair_only(pairs):
    assert [(pair["chosen"], pair["rejected"]) for pair in pairs] == [("Yeast 0.", "Salt.")]


def webgpt_three_scores(tmp_path):
    transcript = "## Human:\nq\n\n## Assistant:\na"
    return jsonl(tmp_path / "w.jsonl", [{"text": [transcript, transcript], "score": [1.0, 0.5, 0.2]}])


def helpsteer2_with_a_text_rating(tmp_path):
    ratings = dict.fromkeys(("helpfulness", "correctness", "coherence", "complexity", "verbosity"), 3)
    return jsonl(tmp_path / "hs2.jsonl", [{"prompt": "Name a cat.", "response": "Tom.", **ratings,
                                            "helpfulness": "1"},
                                           {"prompt": "Name a cat.", "response": "A dog.", **ratings}])


def parquet_of_a_frame_without_metadata(tmp_path):
    """Pairs from a pandas frame whose `category` and `user` columns hold no value (NaN, as pandas writes a missing
    value), saved through `datasets`, which keeps the NaNs."""
    frame = pandas.DataFrame({"prompt": ["Name a cat.", "Name a dog."], "chosen": ["Tom.", "Rex."],
                              "rejected": ["A dog.", "A cat."], "category": [NAN, NAN], "user": [NAN, NAN]})
    Dataset.from_dict(frame.to_dict("list")).to_parquet(str(tmp_path / "pairs.parquet"))
    return load_pairs(tmp_path / "pairs.parquet")


def check_no_metadata(pairs):
    assert pairs["category"] == [None, None] and pairs["user"] == [None, None]
    assert pairs["chosen"] == ["Tom.", "Rex."]


def odd_users(tmp_path):
    pairs = generate_preference_set(4, seed=4).select(range(20)).to_list()
    users = [None, "../users/alice.safetensors", "C:\\users\\bob", "  "]
    rows = [{**pair, "user": users[i % len(users)]} for i, pair in enumerate(pairs)]
    return load_pairs(jsonl(tmp_path / "pairs.jsonl", rows)), users


def check_users_verbatim(outcome):
    pairs, users = outcome
    assert pairs["user"] == [users[i % len(users)] for i in range(20)]


def adapt_on(write):
    def run(tmp_path):
        w = world()
        return run_cli("adapt", w["checkpoint"], "--data", write(tmp_path), "--n", 10, "--cache-dir", w["cache"],
                       "--output", tmp_path / "r.safetensors")
    return run


def pairs_with_int_users(tmp_path):
    pairs = generate_preference_set(4, seed=4).select(range(20)).to_list()
    return jsonl(tmp_path / "pairs.jsonl", [{**pair, "user": i % 3} for i, pair in enumerate(pairs)])


DATA_CASES = [
    Case("parquet file with zero rows", "error", "the file holds no records (0 rows)",
         eval_on(zero_row_parquet)),
    Case("jsonl of empty objects", "error", "every record is an empty object ({})",
         eval_on(text("pairs.jsonl", "{}\n{}\n"))),
    Case("json file holding one empty object", "error", "every record is an empty object ({})",
         eval_on(text("pairs.json", "{}"))),
    Case("csv with a header and no rows", "error", "expected json, jsonl, jsonl.gz or parquet file(s)",
         eval_on(text("pairs.csv", "prompt,chosen,rejected\n"))),
    Case("0-byte csv", "error", "found ['pairs.csv']", eval_on(text("pairs.csv", ""))),
    Case("parquet file named .jsonl (real HH records)", "error", "it is a parquet file, not JSON; give it the "
         ".parquet extension", eval_on(parquet_named_jsonl)),
    Case("--format csv on a jsonl file", "error", "unknown format 'csv'",
         eval_on(lambda t: world()["pairs"], "--format", "csv")),
    Case("SHP-format file forced as hh-rlhf (real file)", "error", "missing column(s) ['chosen', 'rejected']",
         eval_on(lambda t: shutil.copy(SHP_FORMAT, t / "shp.jsonl"), "--format", "hh-rlhf")),
    Case("HH file forced as shp (real records)", "error", "missing column(s) ['history', 'human_ref_A'",
         eval_on(lambda t: jsonl(t / "hh.jsonl", hh_records()), "--format", "shp")),
    Case("TRL text prompts forced as hf_smoe", "error", "field 'prompt' must be a non-empty list of chat messages",
         eval_on(trl_text_pairs, "--format", "hf_smoe")),
    Case("TRL pairs forced as hh-rlhf", "error", "field 'chosen' does not open with a turn marker",
         eval_on(trl_text_pairs, "--format", "hh-rlhf")),
    Case("HH transcripts forced as trl keep the whole transcript", "warning", "trl: dropped 1 pairs whose "
         "responses share no prompt", hh_as_trl, check_hh_as_trl),
    Case("rating given as text in one record", "error", "line 2: field 'helpfulness' is a number where line 1 has "
         "a string", lambda t: load_pairs(helpsteer2_with_a_text_rating(t), format="helpsteer2")),
    Case("shp labels all null", "error", "no usable pair in 2 records (dropped 2 pairs with a missing (null or NaN) "
         "label)", eval_on(shp_file(shp_rows(None, None)))),
    Case("shp labels all NaN in parquet", "error", "dropped 2 pairs with a missing (null or NaN) label",
         eval_on(shp_file(shp_rows(NAN, NAN), "shp.parquet"))),
    Case("shp labels as text", "error", "record 0: field 'labels' must be a number, got str",
         eval_on(shp_file(shp_rows("1", "0")))),
    Case("shp labels as booleans in parquet", "error", "record 0: field 'labels' must be a number, got bool",
         eval_on(shp_file(shp_rows(True, False), "shp.parquet"))),
    Case("shp label missing from one record", "warning", "shp: dropped 1 pairs with a missing (null or NaN) label",
         label_missing_in_one_record, check_first_pair_only),
    Case("webgpt score with three values", "error", "record 0: field 'score' must hold two scores",
         eval_on(webgpt_three_scores, "--format", "webgpt")),
    Case("category and user columns of pandas NaNs", "handled", "", parquet_of_a_frame_without_metadata,
         check_no_metadata),
    Case("user column with None and path-like names is kept verbatim", "handled", "", odd_users,
         check_users_verbatim),
    Case("smoe adapt on a user column of numbers", "error", "record 0: field 'user' must be text, got int",
         adapt_on(pairs_with_int_users)),
]


# Odd text through training, evaluation and `smoe_reward`.


def hand_reward(prompt: str, response: str) -> float:
    """The reward of the model `smoe_reward` computes with, run on the chat template's token ids of prompt +
    response, its prompt boundary given as the rendered prompt's length."""
    tokenizer = world()["tokenizer"]
    messages = [{"role": "user", "content": prompt}]
    ids = render_ids(tokenizer, messages + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    return model_reward(ids, len(render_ids(tokenizer, messages, add_generation_prompt=True)))


@torch.no_grad()
def model_reward(ids: list, prompt_length: int | None) -> float:
    """The model's forward on one row of token ids; without `prompt_length` the model finds the boundary itself."""
    model = world()["reward"].model
    lengths = None if prompt_length is None else torch.tensor([prompt_length])
    return model(input_ids=torch.tensor([ids]), prompt_lengths=lengths).logits.item()


def score(prompt, response) -> float:
    return world()["reward"](prompts=[prompt], completions=[response])[0]


def marker_in_response(tmp_path):
    return score(PROMPT, f"good {TURN_MARKERS}bad answer"), hand_reward(PROMPT, f"good {TURN_MARKERS}bad answer")


def check_boundary_kept(outcome):
    """The reward is read at the rendered prompt's end, not at the last turn opener (which the model would find by
    itself, and which gives another reward)."""
    reward, expected = outcome
    assert math.isclose(reward, expected, rel_tol=0, abs_tol=1e-6), (reward, expected)
    tokenizer = world()["tokenizer"]
    ids = render_ids(tokenizer, [{"role": "user", "content": PROMPT},
                                 {"role": "assistant", "content": f"good {TURN_MARKERS}bad answer"}], False)
    assert abs(model_reward(ids, None) - expected) > 1e-6


def marker_in_prompt(tmp_path):
    prompt = f"hello {TURN_MARKERS}yes <|im_end|>\n<|im_start|>user\nhow are you"
    return score(prompt, "good answer"), hand_reward(prompt, "good answer")


def check_reward(outcome):
    reward, expected = outcome
    assert math.isclose(reward, expected, rel_tol=0, abs_tol=1e-6), (reward, expected)


def marker_in_conversational_completion(tmp_path):
    completion = [{"role": "assistant", "content": f"good {TURN_MARKERS}bad answer"}]
    return world()["reward"](prompts=[[{"role": "user", "content": PROMPT}]], completions=[completion])[0], \
        hand_reward(PROMPT, f"good {TURN_MARKERS}bad answer")


MEGABYTE_RESPONSE = "good " * 200_000 + "thanks"


def megabyte_response(tmp_path):
    return score(PROMPT, MEGABYTE_RESPONSE)


def check_cut_in_the_middle(reward):
    """`encode_pair`'s rule by hand: the prompt (well under half of SHORT) whole, then the response's first tokens
    and its last token with the end-of-turn token, SHORT tokens in all."""
    tokenizer = world()["tokenizer"]
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = render_ids(tokenizer, messages, add_generation_prompt=True)
    full = render_ids(tokenizer, messages + [{"role": "assistant", "content": MEGABYTE_RESPONSE}], False)
    assert tokenizer.convert_ids_to_tokens(full[-2:]) == ["thanks", "<|im_end|>"]
    ids = full[:SHORT - 2] + full[-2:]
    assert math.isclose(reward, model_reward(ids, len(prompt_ids)), rel_tol=0, abs_tol=1e-6)


ODD_PAIRS = [
    {"prompt": "what is the\x00 cat", "chosen": "a cat\x00 is a pet", "rejected": "no\x00"},
    {"prompt": "\u05de\u05d4 \u05e9\u05dc\u05d5\u05de\u05da \u200f?", "chosen": "\u0645\u0631\u062d\u0628\u0627 "
     "\u0643\u064a\u0641 \u062d\u0627\u0644\u0643", "rejected": "hello \u202eyou"},
    {"prompt": "\U0001f468\u200d\U0001f469\u200d\U0001f467 family?", "chosen": "\U0001f44d\U0001f3fd yes",
     "rejected": "e\u0301\u0301 no \U0001f1fa\U0001f1f8"},
    {"prompt": PROMPT, "chosen": MEGABYTE_RESPONSE, "rejected": "bad"},
    {"prompt": PROMPT, "chosen": f"good {TURN_MARKERS}bad", "rejected": f"bad {TURN_MARKERS}good"},
]


def odd_pairs_file(tmp_path) -> Path:
    return jsonl(tmp_path / "odd.jsonl", ODD_PAIRS)


def odd_pairs_loaded(tmp_path):
    return load_pairs(odd_pairs_file(tmp_path))


def check_texts_verbatim(pairs):
    assert [(pair["prompt"][0]["content"], pair["chosen"], pair["rejected"]) for pair in pairs] == [
        (pair["prompt"], pair["chosen"], pair["rejected"]) for pair in ODD_PAIRS]


def eval_odd_pairs(tmp_path):
    w = world()
    return run_cli("eval", w["checkpoint"], "--dataset", odd_pairs_file(tmp_path), "--cache-dir", tmp_path / "cache",
                   "--output", tmp_path / "e.json"), tmp_path


def check_accuracy_from_rewards(outcome):
    """`smoe eval`'s accuracy on the odd pairs is the share that `smoe_reward` ranks right, pair by pair."""
    result, tmp_path = outcome
    succeeded(result)
    margins = [score(p["prompt"], p["chosen"]) - score(p["prompt"], p["rejected"]) for p in ODD_PAIRS]
    assert min(abs(margin) for margin in margins) > 1e-4  # no pair near a tie, which rounding could flip
    written = written_results(tmp_path, "e.json")["results"]
    assert written["pairs"] == len(ODD_PAIRS)
    assert math.isclose(written["accuracy"], sum(margin > 0 for margin in margins) / len(ODD_PAIRS), abs_tol=1e-6)


def train_on_odd_pairs(tmp_path):
    rows = generate_preference_set(40, seed=5).to_list() + [
        {**pair, "prompt": [{"role": "user", "content": pair["prompt"]}]} for pair in ODD_PAIRS]
    jsonl(tmp_path / "pairs.jsonl", rows)
    w = world()
    return run_cli("train", "--dataset", tmp_path / "pairs.jsonl", "--backbone", w["backbone"], "--max-length", SHORT,
                   "--epochs", 1, "--num-experts", 2, "--cache-dir", tmp_path / "cache", "--output-dir",
                   tmp_path / "out"), tmp_path


def check_trained_on_odd_pairs(outcome):
    result, tmp_path = outcome
    succeeded(result)
    written = written_results(tmp_path / "out", "results.json")
    assert written["job"]["data"]["max_pairs"] is None and math.isfinite(written["results"]["loss"])
    reward = smoe_reward(tmp_path / "out")
    rewards = reward(prompts=[p["prompt"] for p in ODD_PAIRS], completions=[p["chosen"] for p in ODD_PAIRS])
    assert all(math.isfinite(value) for value in rewards)


ODD_TEXT_CASES = [
    Case("smoe_reward whitespace-only prompt", "error", "prompt: empty text",
         lambda t: score(" \n\t", "good answer")),
    Case("smoe_reward conversational prompt ending in a blank turn", "error", "prompt: empty text",
         lambda t: score([{"role": "system", "content": "be kind"}, {"role": "user", "content": "  "}], "good")),
    Case("smoe_reward prompt with an unpaired surrogate", "error", "prompt[0].content: not Unicode text",
         lambda t: score("hello \ud800 there", "good answer")),
    Case("smoe_reward response with an unpaired surrogate", "error", "response: not Unicode text",
         lambda t: score("hello", "good \udfff answer")),
    Case("response holding the template's turn markers", "handled", "", marker_in_response, check_boundary_kept),
    Case("prompt holding the template's turn markers", "handled", "", marker_in_prompt, check_reward),
    Case("conversational completion holding turn markers", "handled", "", marker_in_conversational_completion,
         check_reward),
    Case("1 MB response is cut in its middle", "handled", "", megabyte_response, check_cut_in_the_middle),
    Case("NUL, right-to-left, emoji and 1 MB texts load verbatim", "handled", "", odd_pairs_loaded,
         check_texts_verbatim),
    Case("smoe eval on NUL, RTL, emoji, 1 MB and turn-marker texts", "handled", "", eval_odd_pairs,
         check_accuracy_from_rewards),
    Case("smoe train on NUL, RTL, emoji, 1 MB and turn-marker texts", "handled", "", train_on_odd_pairs,
         check_trained_on_odd_pairs),
]


# Checkpoints saved without their tokenizer; the max length a checkpoint was trained at.


def without_tokenizer(tmp_path) -> Path:
    folder = Path(shutil.copytree(world()["checkpoint"], tmp_path / "checkpoint"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    return folder


def reward_with_given_tokenizer(tmp_path):
    reward = smoe_reward(without_tokenizer(tmp_path), tokenizer=world()["tokenizer"])
    return reward(prompts=[PROMPT], completions=["good answer"])[0]


def check_same_as_saved_tokenizer(reward):
    assert reward == score(PROMPT, "good answer")


def counting_embeddings():
    """A patch of `EmbeddingCache._forward` that counts the batches embedded (and embeds them)."""
    return mock.patch.object(EmbeddingCache, "_forward", autospec=True, side_effect=EmbeddingCache._forward)


def eval_without_max_length(tmp_path):
    w = world()
    args = ("eval", w["checkpoint"], "--dataset", w["pairs"], "--cache-dir", w["cache"])
    with counting_embeddings() as forward:
        implicit = run_cli(*args, "--output", tmp_path / "implicit.json")
    explicit = run_cli(*args, "--max-length", SHORT, "--output", tmp_path / "explicit.json")
    assert explicit.code == 0, explicit.stderr[-2000:]
    return implicit, tmp_path, forward.call_count


def check_checkpoint_length(outcome):
    """The results of an explicit --max-length SHORT, from the training features: nothing embedded again."""
    result, tmp_path, embedded = outcome
    succeeded(result)
    implicit, explicit = (written_results(tmp_path, name) for name in ("implicit.json", "explicit.json"))
    assert implicit["results"] == explicit["results"] and implicit["results"]["pairs"] == world()["pair_count"]
    assert embedded == 0


def adapt_without_max_length(tmp_path):
    w = world()
    args = ("adapt", w["checkpoint"], "--data", w["pairs"], "--n", 10, "--cache-dir", w["cache"])
    with counting_embeddings() as forward:
        implicit = run_cli(*args, "--output", tmp_path / "implicit.safetensors")
    explicit = run_cli(*args, "--max-length", SHORT, "--output", tmp_path / "explicit.safetensors")
    assert explicit.code == 0, explicit.stderr[-2000:]
    return implicit, explicit, tmp_path, forward.call_count


def check_same_router(outcome):
    """The router and the accuracies of an explicit --max-length SHORT, from the training features."""
    implicit_run, explicit_run, tmp_path, embedded = outcome
    succeeded(implicit_run)
    implicit, explicit = (load_file(tmp_path / f"{name}.safetensors") for name in ("implicit", "explicit"))
    assert implicit.keys() == explicit.keys() and all(torch.equal(implicit[k], explicit[k]) for k in implicit)
    assert implicit_run.stdout.splitlines()[:2] == explicit_run.stdout.splitlines()[:2]
    assert embedded == 0


def interpret_without_max_length(tmp_path):
    w = world()
    with counting_embeddings() as forward:
        result = run_cli("interpret", w["checkpoint"], "--dataset", w["pairs"], "--cache-dir", w["cache"],
                         "--generator", w["lm"], "--generation-cache", tmp_path / "generations",
                         "--no-random-baseline", "--output-dir", tmp_path / "read")
    return result, tmp_path, forward.call_count


def check_interpreted_at_checkpoint_length(outcome):
    result, tmp_path, embedded = outcome
    succeeded(result)
    written = json.loads((tmp_path / "read" / "interpretation.json").read_text())
    assert written["job"]["max_length"] == SHORT and len(written["results"]["experts"]) == 3
    assert embedded == 0


CHECKPOINT_CASES = [
    Case("smoe_reward on a checkpoint saved without its tokenizer", "error", "holds no tokenizer (no "
         "tokenizer.json or tokenizer_config.json beside the weights); save the tokenizer there",
         lambda t: smoe_reward(without_tokenizer(t))),
    Case("smoe eval on a checkpoint saved without its tokenizer", "error", "holds no tokenizer",
         lambda t: run_cli("eval", without_tokenizer(t), "--dataset", world()["pairs"])),
    Case("smoe steer on a checkpoint saved without its tokenizer", "error", "pass tokenizer=... to smoe_reward",
         lambda t: run_cli("steer", without_tokenizer(t), "--expert", 0, "--weight", 0.5, "--prompt", PROMPT,
                           "--responses", "good")),
    Case("smoe_reward tokenizer= for a checkpoint without one", "handled", "", reward_with_given_tokenizer,
         check_same_as_saved_tokenizer),
    Case("smoe eval without --max-length uses the checkpoint's", "handled", "", eval_without_max_length,
         check_checkpoint_length),
    Case("smoe adapt without --max-length uses the checkpoint's", "handled", "", adapt_without_max_length,
         check_same_router),
    Case("smoe interpret without --max-length uses the checkpoint's", "handled", "", interpret_without_max_length,
         check_interpreted_at_checkpoint_length),
]


# The user column `smoe_reward` routes by.


def routed(users, prompts=(PROMPT, "what is a cat"), responses=("good", "a pet"), routers=None):
    """`smoe_reward` of the world's checkpoint with `routers` (default: alice's), called with the `user` column."""
    def run(tmp_path):
        reward = smoe_reward(world()["checkpoint"], routers=routers or {"alice": world()["router"]})
        return reward(prompts=list(prompts), completions=list(responses), user=users)
    return run


def path_like_user(tmp_path):
    """A user named like a path, whose router is given as a `Path`, against the same router set on the model."""
    name = "../users/alice.safetensors"
    rewards = routed([name, name], routers={name: Path(world()["router"])})(tmp_path)
    model, tokenizer = load_checkpoint(world()["checkpoint"])
    set_router(model, world()["router"])
    return rewards, smoe_reward(model, tokenizer=tokenizer)(prompts=[PROMPT, "what is a cat"],
                                                           completions=["good", "a pet"])


def check_same_rewards(outcome):
    rewards, expected = outcome
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-6) for a, b in zip(rewards, expected, strict=True))


def mixed_users(tmp_path):
    users = [None, "alice", None, "alice"]
    prompts, responses = [PROMPT, PROMPT, "what is a cat", "what is a cat"], ["good", "good", "a pet", "a pet"]
    together = routed(users, prompts, responses)(tmp_path)
    alone = [routed([user], [prompt], [response])(tmp_path)[0] for user, prompt, response in
             zip(users, prompts, responses)]
    return together, alone


def check_each_user_routed(outcome):
    together, alone = outcome
    check_same_rewards(outcome)
    assert together[0] != together[1]  # the router changes the reward: the check can tell them apart


USER_CASES = [
    Case("smoe_reward user column shorter than the batch", "error", "user: 1 values for 2 texts", routed(["alice"])),
    Case("smoe_reward user column longer than the batch", "error", "user: 3 values for 2 texts",
         routed(["alice", None, "alice"])),
    Case("smoe_reward numeric user with routers named by text", "error", "no router for [3] (routers are given for "
         "['3'])", lambda t: routed([3, None], routers={"3": world()["router"]})(t)),
    Case("smoe_reward path-like user and router path", "handled", "", path_like_user, check_same_rewards),
    Case("smoe_reward users mixing None and names in one batch", "handled", "", mixed_users,
         check_each_user_routed),
]


@parametrize(RECIPE_CASES + DATA_CASES + ODD_TEXT_CASES + CHECKPOINT_CASES + USER_CASES)
def test_input_failure(case, tmp_path):
    check_case(case, tmp_path)
