"""The failure catalogue of `smoe interpret` and `hf_smoe.interpret`: generators that are not language models or name
nothing, endpoints that misbehave, a damaged answer cache, degenerate data and routing, outputs that cannot be
written, and GGUF generators that are damaged, foreign or half converted.

Every case is a real run of the code a user would hit: a tiny checkpoint (`test_catalogue_cli.world`), generators that
are tiny folders and GGUF files, and endpoints that are tiny HTTP servers on 127.0.0.1 started here. A clean run
against a well-behaved stand-in server is the reference the recovered runs must equal.
"""

import functools
import hashlib
import importlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import gguf
import numpy as np
import torch
from catalogue import Case, CliResult, check_case, parametrize, run_cli
from loopback import LoopbackServer, QuietHandler, free_port
from test_catalogue_cli import world as cli_world
from test_endpoint import ScriptedServer, completion
from test_gguf import PACKAGES, write_parts, write_tiny_gguf

from hf_smoe import SMoERewardModel
from hf_smoe.data import load_pairs, split_pairs
from hf_smoe.features import training_encoding
from hf_smoe.interpret import distinct_prompts, interpret_checkpoint
from hf_smoe.interpret.generators import load_generator
from hf_smoe.runtime import gguf_sources
from hf_smoe.runtime.conversion import is_converted
from hf_smoe.testing import save_tiny_backbone, save_tiny_causal_lm, word_tokenizer
from hf_smoe.training.job import save_checkpoint

# What a recovered run must share with the clean one, expert by expert.
COMPARED = ("description", "raw_output", "top_examples", "sample", "judgments", "yes_probabilities",
            "description_fidelity", "fidelity_probability", "threshold")


def stable_fraction(text: str) -> float:
    """A number in (0.01, 0.99) fixed by `text`: the stand-in model's 'opinion' of a prompt."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16 ** 8 * 0.98 + 0.01


def oracle(body: dict) -> tuple:
    """A deterministic stand-in for a chat model: a judge request (log-probabilities asked) gets YES or NO with
    P(YES) fixed by the prompt, a describer request a short description fixed by the prompt."""
    p = stable_fraction(body["messages"][0]["content"])
    if body.get("logprobs"):
        return completion("YES" if p > 0.5 else "NO", {"YES": math.log(p), "NO": math.log(1 - p)})
    return completion(f"mentions topic {int(p * 7)}")


class Interpreted(NamedTuple):
    """A `smoe interpret` run that should succeed, and the folder it wrote to."""

    cli: CliResult
    out: Path

    def results(self) -> dict:
        assert self.cli.code == 0, self.cli.stderr[-2000:]
        return json.loads((self.out / "interpretation.json").read_text())["results"]


def interpret_args(tmp_path, generator, *extra, checkpoint=None, dataset=None, generations=None) -> list:
    w = world()
    return ["interpret", checkpoint or w["checkpoint"], "--dataset", dataset or w["pairs"], "--cache-dir",
            w["cache"], "--generation-cache", generations or tmp_path / "generations", "--output-dir",
            tmp_path / "out", "--no-random-baseline", "--generator", generator, *extra]


def interpret(tmp_path, generator, *extra, **where) -> Interpreted:
    return Interpreted(run_cli(*interpret_args(tmp_path, generator, *extra, **where)), tmp_path / "out")


def names_field(field: str, result: CliResult) -> CliResult:
    """`result`, once its error line is known to name `field` first (the flag the user fixes)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("smoe ")]
    assert errors and errors[0].split(": error: ", 1)[-1].startswith(f"{field}: "), result.stderr[-2000:]
    return result


def refused(field: str, *argv) -> CliResult:
    return names_field(field, run_cli(*argv))


@functools.cache
def world() -> dict:
    """The CLI catalogue's tiny checkpoint and pairs, a tiny causal LM, an encoder, and a stand-in chat server that
    stays up."""
    w = dict(cli_world())
    root = Path(tempfile.mkdtemp(prefix="smoe-catalogue-interpret-"))
    w.update(root=root, lm=save_tiny_causal_lm(root / "lm"), encoder=save_tiny_backbone(root / "encoder", "bert"),
             server=ScriptedServer(oracle))
    return w


@functools.cache
def clean() -> dict:
    """The reference: `smoe interpret` against the stand-in server, with its answer cache (one .jsonl file)."""
    root = world()["root"] / "clean"
    run = interpret(root, world()["server"].url)
    [cache] = (root / "generations").glob("*.jsonl")
    return {"results": run.results(), "cache": cache}


def check_same_as_clean(run: Interpreted) -> None:
    for mine, reference in zip(run.results()["experts"], clean()["results"]["experts"], strict=True):
        assert {key: mine.get(key) for key in COMPARED} == {key: reference.get(key) for key in COMPARED}


# Generators that are no language model, or name nothing.

def folder_with(tmp_path, source, keep) -> Path:
    """A copy of `source` holding only the files `keep` names (an empty tuple: an empty folder)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in keep:
        shutil.copy(Path(source) / name, folder / name)
    return folder


def truncated_lm(tmp_path) -> Path:
    folder = Path(shutil.copytree(world()["lm"], tmp_path / "lm"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


GENERATOR_CASES = [
    Case("--generator an encoder folder", "error", "is not a causal language model",
         lambda t: refused("generator", *interpret_args(t, world()["encoder"]))),
    Case("--generator the reward checkpoint", "error", "is an hf_smoe reward model, which scores text but cannot",
         lambda t: refused("generator", *interpret_args(t, world()["checkpoint"]))),
    Case("--generator the base backbone", "error", "its weights lack ['lm_head.weight']",
         lambda t: refused("generator", *interpret_args(t, world()["backbone"]))),
    Case("--generator an empty folder", "error", "is not a model folder (no config.json)",
         lambda t: refused("generator", *interpret_args(t, folder_with(t, world()["lm"], ())))),
    Case("--generator a folder with only config.json", "error", "cannot load",
         lambda t: refused("generator", *interpret_args(t, folder_with(t, world()["lm"], ("config.json",))))),
    Case("--generator with its weights cut short", "error", "are damaged",
         lambda t: refused("generator", *interpret_args(t, truncated_lm(t)))),
    Case("--generator a near miss of a known model", "error", "did you mean 'qwen2.5-coder-1.5b-instruct'",
         lambda t: refused("generator", *interpret_args(t, "qwen2.5-coder-1.5b"))),
    Case("--generator a server address without http://", "error", "give its URL, http://localhost:8000",
         lambda t: refused("generator", *interpret_args(t, "localhost:8000"))),
    Case("--generator a URL of another scheme", "error", "is not an http:// or https:// URL",
         lambda t: refused("generator", *interpret_args(t, "ftp://127.0.0.1/model"))),
    Case("--generator a URL without a host", "error", "names no host; give the server's URL",
         lambda t: refused("generator", *interpret_args(t, "http://:8000"))),
    Case("--generator a Hub id that is not there (offline)", "error", "cannot load org/no-such-model",
         lambda t: refused("generator", *interpret_args(t, "org/no-such-model"))),
    Case("--generator-model with a local generator", "error", "names the model a server should use",
         lambda t: refused("generator_model", *interpret_args(t, world()["lm"], "--generator-model", "gpt-4o"))),
    Case("--judge an encoder folder", "error", "is not a causal language model",
         lambda t: refused("judge", *interpret_args(t, world()["lm"], "--judge", world()["encoder"]))),
    Case("--judge-model with a local judge", "error", "names the model a server should use",
         lambda t: refused("judge_model", *interpret_args(t, world()["lm"], "--judge", world()["lm"],
                                                          "--judge-model", "m"))),
    Case("load_generator of an empty folder", "error", "generator: ",
         lambda t: load_generator(str(folder_with(t, world()["lm"], ())), cache_dir=t, show_progress=False)),
    Case("--endpoint-timeout 0", "error", "--endpoint-timeout: must be a finite number > 0",
         lambda t: run_cli(*interpret_args(t, world()["server"].url, "--endpoint-timeout", 0))),
    Case("--endpoint-timeout nan", "error", "--endpoint-timeout: must be a finite number > 0",
         lambda t: run_cli(*interpret_args(t, world()["server"].url, "--endpoint-timeout", "nan"))),
]


# Endpoints that misbehave, each a tiny server on 127.0.0.1.

class RawServer(LoopbackServer):
    """A loopback server that answers every POST with the same bytes (status 200, `content_type`)."""

    def __init__(self, body: bytes, content_type: str):
        class Handler(QuietHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


class SilentServer:
    """A port that accepts connections (the kernel completes them) and never answers a byte."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self):
        self.socket.close()


def against(make_server, *extra):
    """A case run: `smoe interpret` against the server `make_server()` starts, closed afterwards."""
    def run(tmp_path):
        server = make_server()
        try:
            result = interpret(tmp_path, server.url, *extra)
        finally:
            server.close()
        return result.cli if result.cli.code else result
    return run


def scripted(respond, delay: float = 0.0):
    return lambda: ScriptedServer(respond, delay)


def with_choices(*choices) -> tuple:
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": list(choices)}, {}


def refusing_once(status: int):
    """Answers `status` (Retry-After: 0) to the first try of every request, the stand-in model's answer to the
    next."""
    seen, lock = set(), threading.Lock()

    def respond(body):
        key = json.dumps(body, sort_keys=True)
        with lock:
            first = key not in seen
            seen.add(key)
        return (status, {"error": "busy"}, {"retry-after": "0"}) if first else oracle(body)
    return respond


def dead_endpoint(tmp_path):
    return refused("generator", *interpret_args(tmp_path, f"http://127.0.0.1:{free_port()}"))


def check_empty_answers(run: Interpreted) -> None:
    """A server whose every answer is content null: every description is the empty answer (asked 3 times), every
    judgment NO without a probability, so each fidelity is 0 by Eq. 19's edge case."""
    for expert in run.results()["experts"]:
        assert expert["description"] == "" and expert["problem"] == "empty answer" and expert["attempts"] == 3
        assert not any(expert["judgments"]) and set(expert["yes_probabilities"]) == {None}
        assert expert["description_fidelity"] == 0.0 and expert["fidelity_probability"] is None


def endpoint_error(field, make_server, *extra):
    """A case run whose one error line must name `field`."""
    def run(tmp_path):
        result = against(make_server, *extra)(tmp_path)
        assert isinstance(result, CliResult), "expected a refusal"
        return names_field(field, result)
    return run


def judge_not_found(tmp_path):
    server = ScriptedServer(lambda body: (404, {"error": {"message": "The model `j` does not exist."}}, {}))
    try:
        return refused("judge", *interpret_args(tmp_path, world()["server"].url, "--judge", server.url,
                                                "--judge-model", "j"))
    finally:
        server.close()


NULL_CONTENT = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}
ENDPOINT_CASES = [
    Case("endpoint: connection refused", "error", "nothing answers at", dead_endpoint),
    Case("endpoint: never answers", "error", "no answer within 0.2 s; raise --endpoint-timeout",
         endpoint_error("generator", SilentServer, "--endpoint-timeout", 0.2)),
    Case("endpoint: an HTML page", "error", "answered a body that is not JSON ('<html><body>Welcome to nginx!",
         endpoint_error("generator", lambda: RawServer(b"<html><body>Welcome to nginx!</body></html>", "text/html"))),
    Case("endpoint: garbage bytes", "error", "not an OpenAI chat completion",
         endpoint_error("generator", lambda: RawServer(bytes(range(128, 256)) * 4, "application/octet-stream"))),
    Case("endpoint: an empty body", "error", "answered an empty body",
         endpoint_error("generator", lambda: RawServer(b"", "application/json"))),
    Case("endpoint: JSON without choices", "error", "answered JSON without a `choices` list",
         endpoint_error("generator", scripted(lambda body: (200, {"id": "x", "object": "chat.completion"}, {})))),
    Case("endpoint: a JSON list", "error", "answered JSON without a `choices` list",
         endpoint_error("generator", scripted(lambda body: (200, [1, 2], {})))),
    Case("endpoint: choices empty", "error", "answered an empty `choices` list",
         endpoint_error("generator", scripted(lambda body: with_choices()))),
    Case("endpoint: content a number", "error", "a choice without a text `message.content`",
         endpoint_error("generator", scripted(lambda body: with_choices({"index": 0, "message": {"content": 5}})))),
    Case("endpoint: content null", "warning", "came without text (message.content null)",
         against(scripted(lambda body: with_choices(NULL_CONTENT))), check_empty_answers),
    Case("endpoint: HTTP 500", "error", "answered HTTP 500: boom; read the server's log",
         endpoint_error("generator", scripted(lambda body: (500, {"error": "boom"}, {})))),
    Case("endpoint: HTTP 429 on every try", "error", "the last with HTTP 429: slow down; it is limiting the request",
         endpoint_error("generator", scripted(lambda body: (429, {"error": "slow down"}, {"retry-after": "0"})))),
    Case("endpoint: HTTP 429 once per request", "handled", "", against(scripted(refusing_once(429))),
         check_same_as_clean),
    Case("endpoint: HTTP 503 once per request", "handled", "", against(scripted(refusing_once(503))),
         check_same_as_clean),
    Case("endpoint: slow but finishing", "handled", "", against(scripted(oracle, delay=0.1)), check_same_as_clean),
    Case("--judge endpoint: model not found", "error", "answered HTTP 404: The model `j` does not exist.; check the "
         "URL and --judge-model", judge_not_found),
]


# A damaged answer cache: dropped, said, asked again; never used.

def damaged_cache(damage):
    """A case run: the clean run's answer cache, damaged by `damage(lines) -> lines`, under a rerun against the same
    server. Returns the run, the cache file after it, and how many requests the rerun made."""
    def run(tmp_path):
        server, cache = world()["server"], tmp_path / "generations" / clean()["cache"].name
        cache.parent.mkdir()
        cache.write_bytes(b"".join(damage(clean()["cache"].read_bytes().splitlines(keepends=True))))
        before = len(server.requests)
        result = interpret(tmp_path, server.url, generations=cache.parent)
        return result, cache, len(server.requests) - before
    return run


def check_recovered(asked_again: int):
    """The rerun equals the clean one, asked exactly the damaged answers again, and left a cache of valid records
    only, every one of them the clean run's."""
    def check(outcome):
        run, cache, requests = outcome
        check_same_as_clean(run)
        assert requests == asked_again
        clean_records = {json.loads(line)["key"]: json.loads(line)["answer"]
                         for line in clean()["cache"].read_text().splitlines()}
        lines = cache.read_bytes().decode("utf-8").split("\n")
        assert lines[-1] == ""  # every record ends its line
        records = [json.loads(line) for line in lines[:-1]]
        assert {record["key"]: record["answer"] for record in records} == clean_records
        assert len(records) == len(clean_records)  # one record per answer: the damaged ones are gone
        assert all(set(record) == {"key", "answer"} for record in records)
    return check


def first_of(kind):
    """The index of the first cache line whose answer is a judgment ("judge") or a text ("generate")."""
    def index(lines):
        return next(i for i, line in enumerate(lines)
                    if isinstance(json.loads(line)["answer"], dict) == (kind == "judge"))
    return index


def replace_answer(kind, answer):
    """Damage: the first `kind` record's answer replaced by `answer` (same key)."""
    def damage(lines):
        i = first_of(kind)(lines)
        lines[i] = (json.dumps({"key": json.loads(lines[i])["key"], "answer": answer}) + "\n").encode()
        return lines
    return damage


def cut_line(where):
    def damage(lines):
        i = len(lines) // 2 if where == "middle" else len(lines) - 1
        lines[i] = lines[i][: len(lines[i]) // 2] + (b"\n" if where == "middle" else b"")
        return lines
    return damage


CACHE_CASES = [
    Case("cache: lines that are JSON but no record", "warning", "3 damaged line(s)",
         damaged_cache(lambda lines: [b'[1, 2]\n', *lines[:3], b'"text"\n', *lines[3:], b"42\n"]),
         check_recovered(0)),
    Case("cache: a line of bytes that are not UTF-8", "warning", "1 damaged line(s)",
         damaged_cache(lambda lines: [*lines[:2], b"\xff\xfe\x00garbage\n", *lines[2:]]), check_recovered(0)),
    Case("cache: a line cut short in the middle", "warning", "1 damaged line(s)", damaged_cache(cut_line("middle")),
         check_recovered(1)),
    Case("cache: the last line cut short (an interrupted run)", "warning", "1 damaged line(s)",
         damaged_cache(cut_line("last")), check_recovered(1)),
    Case("cache: a judgment with P(YES) 2.0", "warning", "1 damaged line(s)",
         damaged_cache(replace_answer("judge", {"answer": True, "probability": 2.0, "raw": "YES"})),
         check_recovered(1)),
    Case("cache: a judgment whose answer is a string", "warning", "1 damaged line(s)",
         damaged_cache(replace_answer("judge", {"answer": "yes", "probability": 0.9, "raw": "YES"})),
         check_recovered(1)),
    Case("cache: a description that is a number", "warning", "1 damaged line(s)",
         damaged_cache(replace_answer("generate", 5)), check_recovered(1)),
    Case("cache: a judge key holding a text", "warning", "are not answers of a judge call",
         damaged_cache(replace_answer("judge", "YES")), check_recovered(1)),
    Case("cache: a record without its answer", "warning", "1 damaged line(s)",
         damaged_cache(lambda lines: [*lines[:1], b'{"key": "abc"}\n', *lines[1:]]), check_recovered(0)),
    Case("cache: the last record without its newline, one answer to add", "handled", "",
         damaged_cache(lambda lines: [*lines[:-2], lines[-1].rstrip(b"\n")]), check_recovered(1)),
    Case("--generation-cache is a file", "error", "is, or is inside, a file",
         lambda t: (t / "f").write_text("x") and refused("generation_cache", *interpret_args(
             t, world()["server"].url, generations=t / "f"))),
]


# Degenerate data and routing.

@functools.cache
def checkpoint_of(name: str) -> Path:
    """A tiny checkpoint of the shared backbone: "single" (K = 1), "static" (K = 3, static routing) or "unrouted"
    (K = 3, expert 2's router output pinned to -1e4: softmax gives it exactly 0 for every prompt)."""
    options = {"single": {"preset": "single"}, "static": {"preset": "static", "num_experts": 3},
               "unrouted": {"num_experts": 3}}[name]
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(world()["backbone"], **options)
    if name == "unrouted":
        with torch.no_grad():
            model.head.router.output.weight[2] = 0.0
            model.head.router.output.bias[2] = -1e4
    folder = world()["root"] / f"checkpoint-{name}"
    save_checkpoint(model, word_tokenizer("chatml"), folder, training_encoding(1024))
    return folder


def pairs_with_prompts(tmp_path, distinct: int) -> Path:
    """The shared pairs with only `distinct` different prompts among them."""
    records = [json.loads(line) for line in Path(world()["pairs"]).read_text().splitlines()]
    for i, record in enumerate(records):
        record["prompt"] = f"question number {i % distinct} about the sun"
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def check_unrouted(run: Interpreted) -> None:
    results = run.results()
    dead = results["experts"][2]
    assert dead["routing_share"] == 0.0 and dead["description_fidelity"] == 0.0
    assert any("expert(s) 2 get the same routing weight" in note for note in results["notes"])
    assert results["description_fidelity"] == sum(e["description_fidelity"] for e in results["experts"]) / 3


def check_few_prompts(run: Interpreted) -> None:
    """Fewer measuring prompts than a fidelity sample: each expert is judged on every one, and a note says so."""
    pairs = load_pairs(world()["pairs"], max_pairs=12, seed=0)
    measuring = split_pairs(pairs, seed=0, validation=0.0, test=0.5, group_by="prompt")["test"]
    count = len(distinct_prompts(measuring["prompt"])[0])
    results = run.results()
    assert all(sorted(expert["sample"]) == list(range(count)) for expert in results["experts"])
    assert any(f"only {count} distinct measuring prompts" in note for note in results["notes"])


def uncategorized_check(tmp_path):
    records = [json.loads(line) for line in Path(world()["pairs"]).read_text().splitlines()]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({**r, "category": None}) + "\n" for r in records))
    (tmp_path / "descriptions.yaml").write_text("cooking: asks about cooking\n")
    return run_cli(*interpret_args(tmp_path, world()["server"].url, "--check-judge", tmp_path / "descriptions.yaml",
                                   dataset=tmp_path / "pairs.jsonl"))


DATA_CASES = [
    Case("one distinct prompt", "error", "distinct measuring prompts; experts are described on one half",
         lambda t: refused("dataset", *interpret_args(t, world()["server"].url, dataset=pairs_with_prompts(t, 1)))),
    Case("two distinct prompts", "error", "which needs at least 1 and 2",
         lambda t: refused("dataset", *interpret_args(t, world()["server"].url, dataset=pairs_with_prompts(t, 2)))),
    Case("K = 1 expert", "error", "every expert gets the same routing weight for every prompt",
         lambda t: refused("checkpoint", *interpret_args(t, world()["server"].url,
                                                         checkpoint=checkpoint_of("single")))),
    Case("static routing", "error", "interpret a checkpoint with a prompt-dependent router",
         lambda t: refused("checkpoint", *interpret_args(t, world()["server"].url,
                                                         checkpoint=checkpoint_of("static")))),
    Case("an expert no prompt is routed to", "warning", "expert(s) 2 get the same routing weight",
         lambda t: interpret(t, world()["server"].url, checkpoint=checkpoint_of("unrouted")), check_unrouted),
    Case("fewer prompts than a fidelity sample", "handled", "",
         lambda t: interpret(t, world()["server"].url, "--max-pairs", 12), check_few_prompts),
    Case("--check-judge on data without categories", "error", "has no `category` column", uncategorized_check),
]


# Outputs: written where they can be, the checkpoint left as it was.

def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@contextmanager
def read_only(folder: Path):
    """`folder` without write permission. Root writes anyway, so `os.access` answers for it as for any user; what
    the run then does to the folder is checked by its bytes."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() == folder.resolve():
            return False
        return real_access(path, mode, *args, **kwargs)

    folder.chmod(0o555)
    try:
        with mock.patch("os.access", access):
            yield
    finally:
        folder.chmod(0o755)


def read_only_checkpoint(output_elsewhere: bool):
    """A case run: `smoe interpret` of a read-only copy of the checkpoint, whose files must stay as they were."""
    def run(tmp_path):
        checkpoint = Path(shutil.copytree(world()["checkpoint"], tmp_path / "checkpoint"))
        before = snapshot(checkpoint)
        args = interpret_args(tmp_path, world()["server"].url, checkpoint=checkpoint)
        if not output_elsewhere:  # the default output: the checkpoint folder
            i = args.index("--output-dir")
            del args[i:i + 2]
        with read_only(checkpoint):
            result = run_cli(*args)
        assert snapshot(checkpoint) == before
        return result if result.code else Interpreted(result, tmp_path / "out")
    return run


def check_written_elsewhere(run: Interpreted) -> None:
    check_same_as_clean(run)
    assert "| ID | Natural Language Description |" in (run.out / "interpretation.md").read_text()


def unwritable_output(tmp_path):
    (tmp_path / "locked").mkdir()
    with read_only(tmp_path / "locked"):
        return refused("output_dir", *interpret_args(tmp_path, world()["server"].url, "--output-dir",
                                                     tmp_path / "locked" / "out"))


OUTPUT_CASES = [
    Case("read-only checkpoint, results beside it", "error", "is not writable; pass --output-dir FOLDER",
         read_only_checkpoint(output_elsewhere=False)),
    Case("read-only checkpoint, --output-dir elsewhere", "warning", "so its model card keeps no expert table",
         read_only_checkpoint(output_elsewhere=True), check_written_elsewhere),
    Case("--output-dir inside a file", "error", "is a file; give a folder path",
         lambda t: (t / "f").write_text("x") and refused("output_dir", *interpret_args(
             t, world()["server"].url, "--output-dir", t / "f" / "out"))),
    Case("--output-dir not writable", "error", "is not writable; choose another --output-dir", unwritable_output),
    Case("interpret_checkpoint output_dir is a file", "error", "output_dir: ",
         lambda t: (t / "f").write_text("x") and interpret_checkpoint(
             world()["checkpoint"], world()["pairs"], generator=world()["server"].url, output_dir=t / "f")),
    Case("--check-judge --output-dir is a file", "error", "is a file",
         lambda t: (t / "f").write_text("x") and (t / "d.yaml").write_text("a: b\n") and refused(
             "output_dir", *interpret_args(t, world()["server"].url, "--check-judge", t / "d.yaml",
                                           "--output-dir", t / "f"))),
]


# GGUF generators: damaged, foreign, half converted.

@functools.cache
def tiny_gguf() -> tuple:
    """(a tiny Qwen2 GGUF file, the model it holds)."""
    path = world()["root"] / "gguf" / "tiny-qwen2.gguf"
    path.parent.mkdir()
    return path, write_tiny_gguf(path)


@contextmanager
def own_cache(tmp_path):
    with mock.patch.dict(os.environ, {"HF_SMOE_CACHE": str(tmp_path / "cache")}):
        yield tmp_path / "cache"


def gguf_generator(make, field="generator"):
    """A case run: `smoe interpret --generator FILE` (or --judge) on the .gguf file `make(tmp_path)` writes."""
    def run(tmp_path):
        path = make(tmp_path)
        with own_cache(tmp_path):
            if field == "judge":
                return refused("judge", *interpret_args(tmp_path, world()["server"].url, "--judge", path))
            return refused(field, *interpret_args(tmp_path, path))
    return run


def gguf_bytes(data):
    def make(tmp_path):
        (tmp_path / "model.gguf").write_bytes(data() if callable(data) else data)
        return tmp_path / "model.gguf"
    return make


def foreign_architecture(tmp_path) -> Path:
    """A well-formed GGUF file of an architecture transformers does not know."""
    path = tmp_path / "mamba9.gguf"
    writer = gguf.GGUFWriter(path, "mamba9")
    writer.add_name("mamba9")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def split_model(damage):
    """A case run: `--generator tiny-split`, the tiny GGUF shipped as three part packages, `damage`d first."""
    def run(tmp_path):
        data = tiny_gguf()[0].read_bytes()
        part_size = math.ceil(len(data) / 3)
        chunks = [data[i:i + part_size] for i in range(0, len(data), part_size)]
        package = f"catalogue_split_{next(PACKAGES)}_part{{n}}"
        model = gguf_sources.SplitModel(name="tiny-split", package=package, parts=3, part_file="data/part{n:02d}.bin",
                                        part_size=part_size, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        write_parts(tmp_path / "site", package, damage(chunks))
        importlib.invalidate_caches()
        with own_cache(tmp_path), mock.patch.dict(gguf_sources.SPLIT_MODELS, {model.name: model}), \
                mock.patch.object(sys, "path", [str(tmp_path / "site"), *sys.path]):
            result = refused("generator", *interpret_args(tmp_path, "tiny-split"))
            joined = tmp_path / "cache" / "gguf"
            assert not joined.exists() or not any(p.suffix in (".gguf", ".partial") for p in joined.iterdir())
        return result
    return run


def flipped_byte(chunks):
    return [chunks[0], bytes([chunks[1][0] ^ 1]) + chunks[1][1:], chunks[2]]


def conversion_target(cache: Path) -> Path:
    path = tiny_gguf()[0]
    return cache / "gguf" / f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}-{path.stem}"


def after_interruption(leave):
    """A case run: `leave(target)` puts what an interrupted conversion left in the cache, then the generator loads
    (`load_generator`, as `smoe interpret --generator FILE` loads it)."""
    def run(tmp_path):
        with own_cache(tmp_path) as cache:
            target = conversion_target(cache)
            target.parent.mkdir(parents=True)
            leave(target, cache)
            generator = load_generator(str(tiny_gguf()[0]), cache_dir=tmp_path / "answers", show_progress=False)
            return generator.generator.model, cache
    return run


def staging_left(target: Path, cache) -> None:
    """A conversion killed midway: its staging folder half written, its lock file left."""
    staging = target.with_name(f".{target.name}.partial")
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    (staging / "model.safetensors").write_bytes(b"\x00" * 100)
    target.with_name(f".{target.name}.lock").touch()


def weights_cut_short(target: Path, cache) -> None:
    """A converted folder whose weights were cut short afterwards: its config and tokenizer look finished."""
    load_generator(str(tiny_gguf()[0]), cache_dir=cache / "answers", show_progress=False)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def check_converted_again(outcome) -> None:
    """The generator runs the model the GGUF holds (its logits), from one finished folder, nothing staged left."""
    model, cache = outcome
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.float()(ids).logits, tiny_gguf()[1](ids).logits, atol=1e-5, rtol=1e-5)
    folders = [p for p in (cache / "gguf").iterdir() if p.is_dir()]
    assert folders == [conversion_target(cache)] and is_converted(folders[0])


GGUF_CASES = [
    Case("GGUF split model: a part missing", "error", "needs part 2 of 3",
         split_model(lambda chunks: [chunks[0], None, chunks[2]])),
    Case("GGUF split model: a part corrupt", "error", "a part is damaged or from another version",
         split_model(flipped_byte)),
    Case("GGUF split model: parts reordered", "error", "a part is damaged or from another version",
         split_model(lambda chunks: [chunks[1], chunks[0], chunks[2]])),
    Case("GGUF split model: a part cut short", "error", "bytes, expected",
         split_model(lambda chunks: [chunks[0], chunks[1], chunks[2][:-1]])),
    Case("GGUF file cut short", "error", "is not a complete GGUF file",
         gguf_generator(gguf_bytes(lambda: tiny_gguf()[0].read_bytes()[:-1000]))),
    Case("GGUF file cut in its header", "error", "is not a complete GGUF file",
         gguf_generator(gguf_bytes(lambda: tiny_gguf()[0].read_bytes()[:200]))),
    Case("GGUF file that is text", "error", "is not a complete GGUF file (GGUF magic invalid)",
         gguf_generator(gguf_bytes(b"not a model\n" * 20))),
    Case("GGUF file empty", "error", "is not a complete GGUF file", gguf_generator(gguf_bytes(b""))),
    Case("GGUF of an architecture transformers cannot load", "error",
         "architecture mamba9 is not supported yet.); give a GGUF file", gguf_generator(foreign_architecture)),
    Case("--judge a GGUF file cut short", "error", "is not a complete GGUF file",
         gguf_generator(gguf_bytes(lambda: tiny_gguf()[0].read_bytes()[:-1000]), field="judge")),
    Case("GGUF conversion killed midway: converted afresh", "handled", "", after_interruption(staging_left),
         check_converted_again),
    Case("GGUF converted folder cut short: converted again", "handled", "", after_interruption(weights_cut_short),
         check_converted_again),
]


@parametrize(GENERATOR_CASES + ENDPOINT_CASES + CACHE_CASES + DATA_CASES + OUTPUT_CASES + GGUF_CASES)
def test_interpret_failure(case, tmp_path):
    check_case(case, tmp_path)
