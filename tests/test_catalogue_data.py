"""The failure catalogue of `hf_smoe.data` loading: bad data files in their real formats, through `load_pairs` and
through `smoe embed`. Each case writes its file into tmp_path; `check` recomputes the expected pairs by hand."""

import gzip
import json
import math
import shutil
from pathlib import Path

from datasets import Dataset

from catalogue import Case, CliResult, check_case, parametrize, run_cli
from hf_smoe.data import HELPSTEER2_CRITERIA, PERSONAL_LLM_REWARD_MODELS, load_pairs
from hf_smoe.testing import save_tiny_backbone

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_HELPFUL = DATA / "hh-rlhf" / "helpful-base.test.jsonl.gz"
SHP_FORMAT = DATA / "shp-format" / "anthropic_helpful.test.jsonl"
DSP = DATA / "dsp" / "domain_specific_preference.test.json"
WEBGPT = DATA / "webgpt" / "webgpt.test.json"
NAN = float("nan")


# Writing files in their real formats.


def jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


def parquet(path, records):
    Dataset.from_list(records).to_parquet(str(path))
    return path


def user(text):
    return [{"role": "user", "content": text}]


def message(role, content):
    return {"role": role, "content": content}


def rows(pairs, *columns):
    return [tuple(pair[column] for column in columns) for pair in pairs]


SKY = {"chosen": "The sky is blue.", "rejected": "The sky is green."}  # TRL's own implicit-prompt example


def expect_rows(columns, expected):
    """A check: the pairs' `columns`, row by row, are exactly `expected`."""
    def check(pairs):
        assert rows(pairs, *columns) == expected
    return check


def load(path, **kwargs):
    return lambda tmp_path: load_pairs(path(tmp_path) if callable(path) else path, **kwargs)


# WebGPT: the real file, a few records, one score made NaN / null.


def webgpt_records(count=8):
    return json.loads(WEBGPT.read_text())[:count]


def webgpt_answer(text):
    return text.split("## Assistant:\n", 1)[1]


def webgpt_expected(records):
    """(chosen, rejected) of each record with two present, different scores: the higher-scored answer first."""
    kept = []
    for record in records:
        a, b = record["score"]
        if a is None or b is None or math.isnan(a) or math.isnan(b) or a == b:
            continue
        better = 0 if a > b else 1
        kept.append((webgpt_answer(record["text"][better]), webgpt_answer(record["text"][1 - better])))
    return kept


def webgpt_with_missing(value, write):
    def run(tmp_path):
        records = webgpt_records()
        assert records[0]["score"] == [1.5, 0.5]  # kept if compared: nan > 0.5 is False would reverse it
        records[0]["score"] = [value, 0.5]
        return load_pairs(write(tmp_path, records), format="webgpt")
    return run


def check_webgpt_missing(pairs):
    records = webgpt_records()
    records[0]["score"] = [None, 0.5]
    expected = webgpt_expected(records)
    assert rows(pairs, "chosen", "rejected") == expected
    assert len(expected) == len(webgpt_expected(webgpt_records())) - 1  # exactly record 0 is gone
    first = webgpt_records()[0]["text"]  # and neither direction of it survives
    assert webgpt_answer(first[0]) not in pairs["chosen"] and webgpt_answer(first[1]) not in pairs["chosen"]


# SHP, HelpSteer2, PersonalLLM with a missing number.


def shp_record(label, a, b, score_a=10, score_b=10, domain="askbaking_train"):
    return {"post_id": "p", "domain": domain, "history": "Why is my bread flat?", "human_ref_A": a, "human_ref_B": b,
            "labels": label, "score_A": score_a, "score_B": score_b}


SHP_ROWS = [shp_record(1, "Dead yeast.", "Too much salt."), shp_record(NAN, "Knead more.", "Use less water."),
            shp_record(0, "Add sugar.", "Proof it warm.")]
SHP_LIKES_ROWS = [shp_record(1, "Dead yeast.", "Too much salt."),
                  shp_record(1, "Knead more.", "Use less water.", score_a=NAN),
                  shp_record(0, "Add sugar.", "Proof it warm.", score_b=None)]


def helpsteer2_rows():
    first = {"prompt": "Name a cat.", "response": "Tom.", **dict.fromkeys(HELPSTEER2_CRITERIA, 3.0)}
    second = {"prompt": "Name a cat.", "response": "A dog.", **dict.fromkeys(HELPSTEER2_CRITERIA, 1.0)}
    second["verbosity"] = 4.0
    first["helpfulness"] = NAN
    return [first, second]


def personal_llm_rows():
    def record(prompt, first, second, gemma):
        return {"prompt": prompt, "response_1": first, "response_2": second,
                **{f"response_{k + 1}_{model}": (gemma[k] if model == "gemma_2b" else 0.0)
                   for model in PERSONAL_LLM_REWARD_MODELS for k in range(2)}}
    return [record("Say hi.", "Hi!", "...", [1.0, NAN]), record("Say bye.", "...", "Bye!", [0.0, 2.0]),
            record("Say yes.", "Yes.", "No.", [3.0, 1.0])]


# HH-RLHF: real records, one whose shared turns end with an assistant turn.


def hh_records(count=4):
    with gzip.open(HH_HELPFUL, "rt") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


def hh_with_assistant_last(tmp_path):
    records = hh_records()
    records.append({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: How can I help?",
                    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: Go away."})
    return load_pairs(jsonl(tmp_path / "hh.jsonl.gz", records, gzip.open), format="hh-rlhf")


def check_hh_assistant_last(pairs):
    with_prompt = load_pairs(Dataset.from_list(hh_records()), format="hh-rlhf")
    assert pairs.to_list() == with_prompt.to_list() and len(pairs) == 4
    assert all(pair["prompt"][-1]["role"] == "user" for pair in pairs)


# Broken files.


def corrupt_jsonl(tmp_path):
    return jsonl(tmp_path / "pairs.jsonl", [SKY, {"prompt": "a b c d", "chosen": "x", "rejected": "y"}])


def with_corrupt_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(SKY) + "\n\n" + '{"chosen": "The sky is red.", "rejected": \n' + json.dumps(SKY) + "\n")
    return path


def truncated_gz(tmp_path):
    records = hh_records(200)
    path = jsonl(tmp_path / "full.jsonl.gz", records, gzip.open)
    data = path.read_bytes()
    cut = tmp_path / "helpful.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def empty_file(name):
    def write(tmp_path):
        path = tmp_path / name
        path.write_bytes(b"")
        return path
    return write


def text_file(name, text):
    def write(tmp_path):
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def mixed_kinds(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    jsonl(folder / "a.jsonl", [SKY])
    parquet(folder / "b.parquet", [SKY])
    return folder


def mixed_columns(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    jsonl(folder / "a.jsonl", [SKY, {"chosen": "2+2=4", "rejected": "2+2=5"}])
    jsonl(folder / "b.jsonl", webgpt_records(2))
    return folder


def mixed_parquet_columns(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    parquet(folder / "a.parquet", [SKY])
    parquet(folder / "b.parquet", [{"prompt": "q", **SKY}])
    return folder


def webgpt_all_ties(tmp_path):
    records = [record for record in json.loads(WEBGPT.read_text()) if record["score"][0] == record["score"][1]][:3]
    return jsonl(tmp_path / "ties.jsonl", records)


def tiny_backbone(tmp_path):
    return save_tiny_backbone(tmp_path / "bb", "llama")


def embed(path, *extra):
    """`smoe embed` on the file `path(tmp_path)` writes, with a tiny saved backbone that the error comes before."""
    def run(tmp_path):
        dataset = path(tmp_path)  # written first: the backbone is built only if the data is read
        return run_cli("embed", "--dataset", dataset, "--backbone", tiny_backbone(tmp_path), "--cache-dir",
                   tmp_path / "cache", *extra)
    return run


def embed_webgpt_with_nan(tmp_path):
    records = webgpt_records(6)
    records[0]["score"] = [NAN, 0.5]
    path = parquet(tmp_path / "webgpt.parquet", records)
    return run_cli("embed", "--dataset", path, "--format", "webgpt", "--backbone", tiny_backbone(tmp_path),
                   "--cache-dir", tmp_path / "cache", "--max-length", 64)


def check_parquet_like_json(both):
    from_parquet, from_json = both
    assert from_parquet.to_list() == from_json.to_list()
    assert rows(from_parquet, "chosen", "rejected") == webgpt_expected(webgpt_records(20))


def check_embed_webgpt(result: CliResult):
    records = webgpt_records(6)
    records[0]["score"] = [None, 0.5]
    assert f"{len(webgpt_expected(records))} pairs cached" in result.stdout


CASES = [
    # 1. Missing numbers (NaN from parquet/pandas, null) are dropped, counted, never compared.
    Case("webgpt NaN score in parquet (real records)", "warning", "webgpt: dropped 1 pairs with a missing (null or "
         "NaN) score", run=webgpt_with_missing(NAN, lambda t, r: parquet(t / "webgpt.parquet", r)),
         check=check_webgpt_missing),
    Case("webgpt null score in jsonl", "warning", "dropped 1 pairs with a missing (null or NaN) score",
         run=webgpt_with_missing(None, lambda t, r: jsonl(t / "webgpt.jsonl", r)), check=check_webgpt_missing),
    Case("webgpt NaN literal in jsonl", "warning", "dropped 1 pairs with a missing",
         run=webgpt_with_missing(NAN, lambda t, r: jsonl(t / "webgpt.jsonl", r)), check=check_webgpt_missing),
    Case("shp NaN label in parquet", "warning", "shp: dropped 1 pairs with a missing (null or NaN) label",
         run=load(lambda t: parquet(t / "shp.parquet", SHP_ROWS)),
         check=expect_rows(("chosen", "rejected",), [("Dead yeast.", "Too much salt."),
                                                                   ("Proof it warm.", "Add sugar.")])),
    Case("shp NaN and null like counts", "warning", "shp: dropped 2 pairs with a missing (null or NaN) score_A or "
         "score_B", run=load(lambda t: parquet(t / "shp.parquet", SHP_LIKES_ROWS)),
         check=expect_rows(("chosen", "rejected",), [("Dead yeast.", "Too much salt.")])),
    Case("helpsteer2 NaN rating", "warning", "helpsteer2: dropped 1 attribute pairs with a missing (null or NaN) "
         "rating", run=load(lambda t: parquet(t / "helpsteer2.parquet", helpsteer2_rows())),
         check=expect_rows(("attribute", "chosen", "rejected",), [
             ("correctness", "Tom.", "A dog."), ("coherence", "Tom.", "A dog."), ("complexity", "Tom.", "A dog."),
             ("verbosity", "A dog.", "Tom.")])),
    Case("personal-llm NaN reward score", "warning", "personal-llm: dropped 1 records with missing (null or NaN) "
         "reward scores", run=load(lambda t: parquet(t / "personal_llm.parquet", personal_llm_rows()),
                                   users={"u": {"gemma_2b": 1.0}}),
         check=expect_rows(("prompt", "chosen", "rejected",), [
             (user("Say bye."), "Bye!", "..."), (user("Say yes."), "Yes.", "No.")])),

    # 2. Implicit standard prompts: a coincidental shared beginning is not a prompt.
    Case("trl implicit one-word coincidental prefix", "warning", "trl: dropped 1 pairs whose responses share no "
         "prompt", run=load(lambda t: jsonl(t / "p.jsonl", [{"chosen": "I like it", "rejected": "I hate it"}, SKY])),
         check=expect_rows(("prompt", "chosen", "rejected",), [
             (user("The sky is"), " blue.", " green.")])),
    Case("trl implicit prefix cut inside a word", "warning", "dropped 1 pairs whose responses share no prompt",
         run=load(lambda t: jsonl(t / "p.jsonl", [SKY, {"chosen": "Paris is lovely", "rejected": "Paris is lousy"}])),
         check=expect_rows(("chosen",), [(" blue.",)])),
    Case("trl implicit file without any prompt", "error", "give the prompt in a 'prompt' column",
         run=load(lambda t: jsonl(t / "p.jsonl", [{"chosen": "I like it", "rejected": "I hate it"},
                                                  {"chosen": "Yes, sure.", "rejected": "No way."}]))),
    Case("trl implicit prompt takes a whole response", "warning", "trl: dropped 1 pairs with an empty response",
         run=load(lambda t: jsonl(t / "p.jsonl", [{"chosen": "Hello there", "rejected": "Hello there, friend"}, SKY])),
         check=expect_rows(("chosen", "rejected",), [(" blue.", " green.")])),
    Case("trl implicit identical texts", "warning", "trl: dropped 1 pairs with identical responses",
         run=load(lambda t: jsonl(t / "p.jsonl", [SKY, {"chosen": "Same answer.", "rejected": "Same answer. "}])),
         check=expect_rows(("prompt", "chosen", "rejected"), [(user("The sky is"), " blue.", " green.")])),

    # 3. Chat roles.
    Case("trl conversational tool role", "error", "record 3: field 'prompt[1].role' must be one of system, user, "
         "assistant, got 'tool'", run=load(lambda t: jsonl(t / "c.jsonl", [
             {"prompt": user(f"q{i}"), "chosen": [message("assistant", "a")],
              "rejected": [message("assistant", "b")]} for i in range(3)] + [
             {"prompt": [message("user", "weather?"), message("tool", "{}")], "chosen": [message("assistant", "a")],
              "rejected": [message("assistant", "b")]}]))),
    Case("trl conversational prompt ends with an assistant turn", "error", "record 0: field 'prompt[1].role' is "
         "'assistant'", run=load(lambda t: jsonl(t / "c.jsonl", [
             {"prompt": [message("user", "hi"), message("assistant", "hello")],
              "chosen": [message("assistant", "a")], "rejected": [message("assistant", "b")]}]))),
    Case("trl conversational implicit prompt ends with an assistant turn", "warning", "trl: dropped 1 pairs whose "
         "shared turns do not end with a user turn", run=load(lambda t: jsonl(t / "c.jsonl", [
             {"chosen": [message("user", "hi"), message("assistant", "hello"), message("assistant", "a")],
              "rejected": [message("user", "hi"), message("assistant", "hello"), message("assistant", "b")]},
             {"chosen": [message("user", "hi"), message("assistant", "c")],
              "rejected": [message("user", "hi"), message("assistant", "d")]}])),
         check=expect_rows(("prompt", "chosen", "rejected",), [(user("hi"), "c", "d")])),
    Case("hh-rlhf shared turns end with an assistant turn (real records)", "warning", "hh-rlhf: dropped 1 pairs "
         "whose shared turns do not end with a user turn", run=hh_with_assistant_last, check=check_hh_assistant_last),
    Case("trl conversational chosen with a function role", "error", "record 0: field 'chosen[1].role' must be one "
         "of system, user, assistant, got 'function'", run=load(lambda t: jsonl(t / "c.jsonl", [
             {"chosen": [message("user", "hi"), message("function", "x")],
              "rejected": [message("user", "hi"), message("assistant", "y")]}]))),

    # 4. Whitespace: identical responses, empty prompts.
    Case("trl explicit response identical up to a trailing space", "warning", "trl: dropped 1 pairs with identical "
         "responses", run=load(lambda t: jsonl(t / "p.jsonl", [
             {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Paris. "},
             {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Milan."}])),
         check=expect_rows(("chosen", "rejected",), [("Rome.", "Milan.")])),
    Case("trl explicit whitespace-only prompt", "warning", "trl: dropped 1 pairs with an empty prompt",
         run=load(lambda t: jsonl(t / "p.jsonl", [{"prompt": " \n ", "chosen": "a", "rejected": "b"},
                                                  {"prompt": "q", "chosen": "c", "rejected": "d"}])),
         check=expect_rows(("prompt", "chosen",), [(user("q"), "c")])),
    Case("trl conversational empty last prompt turn", "warning", "trl: dropped 1 pairs with an empty prompt",
         run=load(lambda t: jsonl(t / "c.jsonl", [
             {"prompt": [message("system", "Be brief."), message("user", "  ")],
              "chosen": [message("assistant", "a")], "rejected": [message("assistant", "b")]},
             {"prompt": [message("system", "Be brief."), message("user", "Hi")],
              "chosen": [message("assistant", "c")], "rejected": [message("assistant", "d")]}])),
         check=expect_rows(("chosen", "rejected",), [("c", "d")])),

    # 5. Empty responses.
    Case("trl standard explicit empty response", "warning", "trl: dropped 2 pairs with an empty response",
         run=load(lambda t: jsonl(t / "p.jsonl", [{"prompt": "q1", "chosen": "", "rejected": "b"},
                                                  {"prompt": "q2", "chosen": "a", "rejected": "\n\t "},
                                                  {"prompt": "q3", "chosen": "c", "rejected": "d"}])),
         check=expect_rows(("chosen", "rejected",), [("c", "d")])),
    Case("trl conversational explicit whitespace response", "warning", "trl: dropped 1 pairs with an empty response",
         run=load(lambda t: jsonl(t / "c.jsonl", [
             {"prompt": user("q1"), "chosen": [message("assistant", " ")], "rejected": [message("assistant", "b")]},
             {"prompt": user("q2"), "chosen": [message("assistant", "c")], "rejected": [message("assistant", "d")]}])),
         check=expect_rows(("chosen", "rejected",), [("c", "d")])),

    # 6. Files that cannot be read.
    Case("corrupt jsonl line", "error", "line 3 is not valid JSON", run=load(with_corrupt_line)),
    Case("truncated jsonl.gz (real HH records)", "error", "the gzip data is corrupt or cut off",
         run=load(truncated_gz)),
    Case("0-byte jsonl file", "error", "the file is empty (0 bytes)", run=load(empty_file("pairs.jsonl"))),
    Case("0-byte parquet file", "error", "the file is empty (0 bytes)", run=load(empty_file("pairs.parquet"))),
    Case("folder mixing jsonl and parquet", "error", "of one kind", run=load(mixed_kinds)),
    Case("folder of jsonl files with different columns", "error", "its files have different columns",
         run=load(mixed_columns)),
    Case("folder of parquet files with different columns", "error", "its files have different columns",
         run=load(mixed_parquet_columns)),
    Case("json array of strings", "error", "item 1 is a JSON str, not a record",
         run=load(text_file("pairs.json", '["The sky is blue.", "The sky is green."]'))),
    Case("json array with a number among records", "error", "item 2 is a JSON int, not a record",
         run=load(text_file("pairs.json", json.dumps([SKY, 7])))),
    Case("json object of settings, not records", "error", "cannot tell the format",
         run=load(text_file("pairs.json", '{"learning_rate": 0.1, "epochs": 3}'))),
    Case("parquet file that is not parquet", "error", "not a readable parquet file",
         run=load(lambda t: shutil.copy(SHP_FORMAT, t / "shp.parquet"))),
    Case("folder without data files", "error", "the folder holds no data file",
         run=load(lambda t: text_file("notes.txt", "hello")(t).parent)),
    Case("hub name not available offline", "error", "'hf-smoe-tests/not-cached': cannot load it from the Hugging "
         "Face Hub", run=load("hf-smoe-tests/not-cached")),

    # 7. Nothing to return.
    Case("max_pairs 0", "error", "max_pairs: must be >= 1", run=load(lambda t: corrupt_jsonl(t), max_pairs=0)),
    Case("max_pairs negative", "error", "max_pairs: must be >= 1", run=load(WEBGPT, max_pairs=-5)),
    Case("every pair dropped (real WebGPT ties)", "error", "no usable pair in 3 records (dropped 3 ties (equal "
         "scores))", run=load(webgpt_all_ties)),
    Case("empty json array", "error", "holds no records", run=load(text_file("pairs.json", "[]"))),
    Case("jsonl of blank lines", "error", "holds no records", run=load(text_file("pairs.jsonl", "\n\n"))),

    # Other bad input.
    Case("missing column with an explicit format", "error", "missing column(s) ['labels']",
         run=load(lambda t: jsonl(t / "shp.jsonl", [{k: v for k, v in shp_record(1, "a", "b").items()
                                                     if k != "labels"}]), format="shp")),
    Case("wrong field type", "error", "record 1: field 'chosen' must be text, got NoneType",
         run=load(lambda t: jsonl(t / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                                  {"prompt": "q", "chosen": None, "rejected": "b"}]))),
    Case("shp label out of range", "error", "record 0: field 'labels' must be 0 or 1, got 2",
         run=load(lambda t: jsonl(t / "shp.jsonl", [shp_record(2, "a", "b")]))),
    Case("hf_smoe category that is not text", "error", "record 0: field 'category' must be text, got int",
         run=load(lambda t: jsonl(t / "pairs.jsonl", [{"prompt": user("q"), "chosen": "a", "rejected": "b",
                                                       "category": 3}]))),
    Case("unknown format", "error", "unknown format 'hh'", run=load(WEBGPT, format="hh")),
    Case("unknown option", "error", "unknown option(s) ['append_criteria']", run=load(DSP, append_criteria=False)),
    Case("nonexistent file", "error", "no such file", run=load(lambda t: t / "missing.jsonl")),
    Case("undetectable columns", "error", "cannot tell the format",
         run=load(lambda t: jsonl(t / "qa.jsonl", [{"question": "q", "answer": "a"}]))),
    Case("webgpt parquet copy loads like the json (real file)", "handled", "",
         run=lambda t: (load_pairs(parquet(t / "w.parquet", webgpt_records(20)), format="webgpt"),
                        load_pairs(jsonl(t / "w.jsonl", webgpt_records(20)), format="webgpt")),
         check=check_parquet_like_json),

    # Through the CLI: one line, exit 2, before the backbone is loaded.
    Case("cli corrupt jsonl line", "error", "line 3 is not valid JSON", run=embed(with_corrupt_line)),
    Case("cli max-pairs -5", "error", "must be an integer >= 1", run=embed(corrupt_jsonl, "--max-pairs", "-5")),
    Case("cli max-pairs 0", "error", "must be an integer >= 1", run=embed(corrupt_jsonl, "--max-pairs", "0")),
    Case("cli truncated jsonl.gz", "error", "the gzip data is corrupt or cut off", run=embed(truncated_gz)),
    Case("cli every pair dropped", "error", "no usable pair", run=embed(webgpt_all_ties)),
    Case("cli tool role", "error", "field 'prompt[1].role' must be one of system, user, assistant, got 'tool'",
         run=embed(lambda t: jsonl(t / "c.jsonl", [
             {"prompt": [message("user", "weather?"), message("tool", "{}")], "chosen": [message("assistant", "a")],
              "rejected": [message("assistant", "b")]}]))),
    Case("cli nonexistent file", "error", "no such file", run=embed(lambda t: t / "missing.jsonl")),
    Case("cli hub name offline", "error", "cannot load it from the Hugging Face Hub",
         run=embed(lambda t: "hf-smoe-tests/not-cached")),
    Case("cli 0-byte file", "error", "the file is empty", run=embed(empty_file("pairs.jsonl"))),
    Case("cli webgpt NaN score embeds the rest", "warning", "webgpt: dropped 1 pairs with a missing",
         run=embed_webgpt_with_nan, check=check_embed_webgpt),
]


@parametrize(CASES)
def test_data_failure(case, tmp_path):
    check_case(case, tmp_path)
