"""The failure catalogue of the command line and the API: arguments, outputs, checkpoints, routers, pushes,
loss weights, routing weights, prompt lengths, Hedge; plus kill -9 and resume of `smoe train`.

Every case builds what it needs on a tiny backbone (`world()`), so each is a real run of the code a user would hit.
"""

import errno
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from catalogue import Case, check_case, parametrize, run_cli
from safetensors.torch import load_file, save_file

from hf_smoe import SMoERewardConfig, SMoERewardModel
from hf_smoe.personalization.adaptation import hedge_adapt, hedge_targets
from hf_smoe.features.encoding import encode_batch, training_encoding
from hf_smoe.hub.push import push_checkpoint
from hf_smoe.losses import moe_preference_loss
from hf_smoe.evaluation.evaluate import category_metrics, evaluate_head
from hf_smoe.training.job import save_checkpoint, train_head
from hf_smoe.personalization.routers import load_router, save_router
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.testing import save_tiny_backbone, word_tokenizer

NAN, INF = float("nan"), float("inf")


@functools.cache
def world() -> dict:
    """A tiny backbone, a saved 3-expert checkpoint of it, a router adapted for it and 40 labelled pairs (jsonl),
    shared by the cases (each copies what it damages)."""
    root = Path(tempfile.mkdtemp(prefix="smoe-catalogue-"))
    backbone = save_tiny_backbone(root / "backbone", "llama")
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone, num_experts=3)
    save_checkpoint(model, word_tokenizer("chatml"), root / "checkpoint", training_encoding(1024))
    save_router(model.head.router, root / "router.safetensors", model)
    generate_preference_set(40, seed=2).to_json(root / "pairs.jsonl")
    return {"root": root, "backbone": backbone, "checkpoint": root / "checkpoint", "model": model,
            "router": root / "router.safetensors", "pairs": root / "pairs.jsonl", "cache": root / "cache"}


def train_args(tmp_path, *extra, output=None):
    w = world()
    return ("train", "--dataset", w["pairs"], "--backbone", w["backbone"], "--max-length", 64, "--epochs", 1,
            "--num-experts", 2, "--cache-dir", w["cache"], "--output-dir", output or tmp_path / "out", *extra)


def copy_checkpoint(tmp_path) -> Path:
    return Path(shutil.copytree(world()["checkpoint"], tmp_path / "checkpoint"))


def with_weights(tmp_path, change, source="checkpoint") -> Path:
    """A copy of the checkpoint (or backbone) whose model.safetensors is truncated or went through `change(dict of
    tensors)`."""
    folder = Path(shutil.copytree(world()[source], tmp_path / source))
    weights = folder / "model.safetensors"
    if change == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        tensors = load_file(weights)
        change(tensors)
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def nan_router_weights(tensors):
    name = next(name for name in tensors if "router" in name and "weight" in name)
    tensors[name][0, 0] = NAN


def eval_args(checkpoint, *extra):
    w = world()
    return ("eval", checkpoint, "--dataset", w["pairs"], "--max-length", 64, "--cache-dir", w["cache"], *extra)


def adapt_args(*extra, output):
    w = world()
    return ("adapt", w["checkpoint"], "--data", w["pairs"], "--n", 10, "--max-length", 64, "--cache-dir", w["cache"],
            "--output", output, *extra)


def stage_other_job(tmp_path):
    """An interrupted run of another job (other seed), with a finished epoch, in the staging folder of
    tmp_path/out."""
    checkpoint = tmp_path / ".out.partial" / "trainer" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / ".out.partial" / "job.json").write_text(json.dumps({"dataset": "other.jsonl", "seed": 7}))
    return run_cli(*train_args(tmp_path))


def rerun_after_a_refused_job(tmp_path):
    """A run that failed before its first epoch (max_length too small for the data), then the fixed command."""
    failed = run_cli(*train_args(tmp_path, "--max-length", 2))
    assert failed.code == 2 and "max_length" in failed.stderr and (tmp_path / ".out.partial").exists()
    return run_cli(*train_args(tmp_path))


def check_fresh_run(result):
    assert result.code == 0, result.stderr[-2000:]
    assert "Resuming" not in result.stdout


def earlier_output(tmp_path):
    """A finished run in tmp_path/out with an extra file (an old eval result) that a replacement must not keep."""
    assert run_cli(*train_args(tmp_path)).code == 0
    (tmp_path / "out" / "eval_results.json").write_text('{"results": {"accuracy": 0.1}}')
    return tmp_path / "out"


def replaced(tmp_path):
    old = earlier_output(tmp_path)
    result = run_cli(*train_args(tmp_path, "--overwrite", "--seed", 1))
    return result, old


def check_replaced(outcome):
    result, folder = outcome
    assert result.code == 0
    assert not (folder / "eval_results.json").exists()  # nothing of the old run stays beside the new weights
    assert json.loads((folder / "results.json").read_text())["job"]["training"]["seed"] == 1
    assert not folder.with_name(".out.partial").exists() and not folder.with_name(".out.old").exists()


def run_home_output(tmp_path):
    with mock.patch.dict(os.environ, {"HOME": str(tmp_path)}):
        return run_cli(*train_args(tmp_path, output="~/home-out")), tmp_path


def check_home_output(outcome):
    result, home = outcome
    assert result.code == 0 and (home / "home-out" / "model.safetensors").is_file()
    assert not Path("~").exists()


def symlinked_tokenizer(tmp_path):
    folder = copy_checkpoint(tmp_path)
    secret = tmp_path / "secret.json"
    secret.write_text((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(secret)
    return push_checkpoint(folder, "org/smoe-rm")


def card_with_local_path(tmp_path):
    folder = copy_checkpoint(tmp_path)
    (folder / "README.md").write_text(f"Trained on {Path.home()}/private/data.jsonl\n")
    return push_checkpoint(folder, "org/smoe-rm")


def foreign_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    return run_cli(*train_args(tmp_path, "--overwrite"))


def full_disk(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "eval.json"))
    with mock.patch("hf_smoe.runtime.outputs.write_text_atomic", side_effect=full):
        return run_cli(*eval_args(world()["checkpoint"], "--output", tmp_path / "eval.json"))


def output_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    return run_cli(*train_args(tmp_path))


def check_no_embedding_happened(message):
    """The argument is refused before any text is embedded (no cache folder appears)."""
    def run(tmp_path):
        w = world()
        cache = tmp_path / "fresh-cache"
        args = [a if a != w["cache"] else cache for a in train_args(tmp_path)]
        (tmp_path / "out").write_text("a file")
        result = run_cli(*args)
        assert not cache.exists()
        return result
    return Case("train --output-dir is a file: refused before embedding", "error", message, run)


def backbone_folder_output(tmp_path):
    backbone = Path(shutil.copytree(world()["backbone"], tmp_path / "bb"))
    result = run_cli(*[a if a != world()["backbone"] else backbone
                       for a in train_args(tmp_path, "--overwrite", output=backbone)])
    assert (backbone / "model.safetensors").is_file()
    return result


def dataset_folder_output(tmp_path):
    (tmp_path / "data").mkdir()
    pairs = Path(shutil.copy(world()["pairs"], tmp_path / "data"))
    return run_cli(*[a if a != world()["pairs"] else pairs for a in train_args(tmp_path, "--overwrite",
                                                                             output=tmp_path / "data")])


def loss_config(**weights):
    return lambda tmp_path: SMoERewardConfig(backbone_config=world()["model"].config.backbone_config, **weights)


def loss_call(**weights):
    lambdas = {"lambda_local": 0.5, "lambda_global": 0.5, "lambda_div": 2.0, "lambda_uniform": 0.0} | weights
    routing = torch.full((4, 3), 1 / 3)
    return lambda tmp_path: moe_preference_loss(routing, torch.zeros(4, 3), torch.zeros(4, 3), **lambdas)


def tiny_features(num_pairs=24, categories=("a", "b")):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    hidden = world()["model"].config.hidden_size
    return Dataset.from_dict({
        **{name: torch.randn(num_pairs, hidden, generator=generator).numpy()
           for name in ("prompt_embedding", "chosen_embedding", "rejected_embedding")},
        "category": [categories[i % len(categories)] for i in range(num_pairs)]})


def one_category_metrics(tmp_path):
    model = world()["model"]
    features = tiny_features(categories=("only",))
    return evaluate_head(model, {"validation": features, "test": features})


def check_one_category(metrics):
    assert "category_coverage" not in metrics and "expert_purity" not in metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0


def diverging_training(tmp_path):
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(world()["backbone"], num_experts=2)
    features = {"train": tiny_features(), "validation": tiny_features(8)}
    with mock.patch("hf_smoe.training.trainer.moe_preference_loss",
                    side_effect=lambda *a, **k: {"loss": torch.tensor(NAN, requires_grad=True) * sum(
                        p.sum() for p in model.head.parameters())}):
        return train_head(model, features, str(tmp_path / "trainer"), seed=0, epochs=1)


def damaged_router(tmp_path):
    path = tmp_path / "router.safetensors"
    shutil.copy(world()["router"], path)
    path.write_bytes(path.read_bytes()[:-40])
    return load_router(path, world()["model"])


def nan_router(tmp_path):
    model = world()["model"]
    router = SMoERewardModel.from_backbone(world()["backbone"], num_experts=3).head.router
    router.load_state_dict(model.head.router.state_dict())
    with torch.no_grad():
        next(router.parameters())[0, 0] = NAN
    save_router(router, tmp_path / "r.safetensors", model)
    return load_router(tmp_path / "r.safetensors", model)


def other_experts_router(tmp_path):
    other = SMoERewardModel.from_backbone(world()["backbone"], num_experts=3)
    return load_router(world()["router"], other)


def hedge(**options):
    return lambda tmp_path: hedge_adapt(world()["model"].head, tiny_features(), **options)


def forward(**inputs):
    def run(tmp_path):
        batch = encode_batch(word_tokenizer("chatml"), ["hello how are you", "what is a cat"], ["good", "a pet"])
        return world()["model"](**(batch | inputs))
    return run


def saved_config_has_no_local_path(tmp_path):
    return json.loads((world()["checkpoint"] / "config.json").read_text())


def check_backbone_name(config):
    assert config["backbone_config"]["_name_or_path"] == Path(world()["backbone"]).name


CASES = [
    # Arguments: refused by the parser (exit 2, one `smoe CMD: error:` line) before anything loads.
    Case("train --epochs 0", "error", "epochs: must be a number > 0",
         lambda t: run_cli(*train_args(t), "--epochs", 0)),
    Case("train --epochs nan", "error", "epochs: must be a number > 0",
         lambda t: run_cli(*train_args(t), "--epochs", "nan")),
    Case("train --epochs -1", "error", "epochs: must be a number > 0", lambda t: run_cli(*train_args(t), "--epochs", "-1")),
    Case("train --max-pairs -5", "error", "max_pairs: must be an integer >= 1", lambda t: run_cli(*train_args(t), "--max-pairs", -5)),
    Case("train --max-pairs 0", "error", "max_pairs: must be an integer >= 1", lambda t: run_cli(*train_args(t), "--max-pairs", 0)),
    Case("train --max-pairs ten", "error", "invalid int value", lambda t: run_cli(*train_args(t), "--max-pairs", "ten")),
    Case("train --num-experts 0", "error", "num_experts: must be an integer >= 1",
         lambda t: run_cli(*train_args(t), "--num-experts", 0)),
    Case("train --max-length 0", "error", "max_length: must be an integer >= 1", lambda t: run_cli(*train_args(t), "--max-length", 0)),
    Case("train --preset sparce", "error", "preset: unknown preset", lambda t: run_cli(*train_args(t), "--preset", "sparce")),
    Case("eval --max-pairs 0", "error", "--max-pairs: must be an integer >= 1",
         lambda t: run_cli(*eval_args(world()["checkpoint"], "--max-pairs", 0))),
    Case("adapt --n 0", "error", "--n: must be an integer >= 1", lambda t: run_cli(*adapt_args("--n", 0, output=t / "r.safetensors"))),
    Case("adapt --n larger than the data", "error", "n: need 0 < n < ",
         lambda t: run_cli(*adapt_args("--n", 5000, output=t / "r.safetensors"))),
    Case("adapt --method unknown", "error", "invalid choice",
         lambda t: run_cli(*adapt_args("--method", "bayes", output=t / "r.safetensors"))),
    Case("train --push-to-hub bad id", "error", "is not a valid Hub repo id",
         lambda t: run_cli(*train_args(t), "--push_to_hub", "--hub_model_id", "org/bad id!")),
    Case("train --dataset missing", "error", "no such file",
         lambda t: run_cli(*[a if a != world()["pairs"] else t / "missing.jsonl" for a in train_args(t)])),
    # Backbones and checkpoints that are not what they claim.
    Case("train --backbone nonexistent path", "error", "backbone: no such folder",
         lambda t: run_cli(*[a if a != world()["backbone"] else t / "nowhere" for a in train_args(t)])),
    Case("train --backbone folder that is not a model", "error", "is not a model folder (no config.json)",
         lambda t: (t / "empty").mkdir() or run_cli(*[a if a != world()["backbone"] else t / "empty"
                                                      for a in train_args(t)])),
    Case("train --backbone an hf_smoe checkpoint", "error", "is an hf_smoe reward model, not a backbone",
         lambda t: run_cli(*[a if a != world()["backbone"] else world()["checkpoint"] for a in train_args(t)])),
    Case("train --backbone with truncated weights", "error", "weights of",
         lambda t: run_cli(*[a if a != world()["backbone"] else with_weights(t, "truncate", "backbone")
                           for a in train_args(t)])),
    Case("eval checkpoint nonexistent", "error", "checkpoint: no such folder",
         lambda t: run_cli(*eval_args(t / "nowhere"))),
    Case("eval checkpoint is the backbone", "error", "is not an hf_smoe reward model",
         lambda t: run_cli(*eval_args(world()["backbone"]))),
    Case("eval checkpoint folder without config", "error", "is not a model folder",
         lambda t: (t / "empty").mkdir() or run_cli(*eval_args(t / "empty"))),
    Case("eval truncated model.safetensors", "error", "are damaged",
         lambda t: run_cli(*eval_args(with_weights(t, "truncate")))),
    Case("eval NaN weights in the checkpoint", "error", "holds NaN or infinite weights",
         lambda t: run_cli(*eval_args(with_weights(t, nan_router_weights)))),
    Case("eval invalid config.json", "error", "cannot load",
         lambda t: (copy_checkpoint(t) / "config.json").write_text("{not json") and run_cli(
             *eval_args(t / "checkpoint"))),
    Case("steer --weight 1.5", "error", "weight: the target expert's weight must be in [0, 1]",
         lambda t: run_cli("steer", world()["checkpoint"], "--expert", 0, "--weight", 1.5, "--prompt", "hello",
                           "--responses", "hi")),
    Case("steer --weight nan", "error", "weight",
         lambda t: run_cli("steer", world()["checkpoint"], "--expert", 0, "--weight", "nan", "--prompt", "hello",
                           "--responses", "hi")),
    Case("steer --expert 9", "error", "expert: must be in [0, 2]",
         lambda t: run_cli("steer", world()["checkpoint"], "--expert", 9, "--weight", 0.5, "--prompt", "hello",
                           "--responses", "hi")),
    # Outputs: nothing lost, nothing clobbered.
    check_no_embedding_happened("--output-dir: "),
    Case("train --output-dir holds a checkpoint", "error", "already holds an hf_smoe output; pass --overwrite",
         lambda t: earlier_output(t) and run_cli(*train_args(t))),
    Case("train --overwrite replaces an earlier output whole", "handled", "", replaced, check_replaced),
    Case("train --output-dir is the backbone folder", "error", "is or holds the backbone", backbone_folder_output),
    Case("train --output-dir holds the dataset", "error", "is or holds the dataset", dataset_folder_output),
    Case("train --overwrite on someone else's files", "error", "holds files hf_smoe did not write", foreign_files),
    Case("train over another job's interrupted run", "error", "holds an interrupted run of a different job",
         stage_other_job),
    Case("a fixed rerun after a failed job starts afresh", "handled", "", rerun_after_a_refused_job,
         check_fresh_run),
    Case("train --output-dir with ~ is expanded", "handled", "",
         run_home_output, check_home_output),
    Case("eval --output is a folder", "error", "is a folder",
         lambda t: run_cli(*eval_args(world()["checkpoint"], "--output", t))),
    Case("eval --output not json", "error", "must be a .json file",
         lambda t: run_cli(*eval_args(world()["checkpoint"], "--output", t / "results.txt"))),
    Case("eval --output someone else's file", "error", "hf_smoe did not write it",
         lambda t: (t / "mine.json").write_text("[1, 2]") and run_cli(
             *eval_args(world()["checkpoint"], "--output", t / "mine.json", "--overwrite"))),
    Case("adapt --output CKPT/model.safetensors", "error", "hf_smoe did not write it",
         lambda t: run_cli(*adapt_args("--overwrite", output=copy_checkpoint(t) / "model.safetensors"))),
    Case("adapt --output an existing router", "error", "pass --overwrite",
         lambda t: run_cli(*adapt_args(output=world()["router"]))),
    Case("adapt --output not safetensors", "error", "must be a .safetensors file",
         lambda t: run_cli(*adapt_args(output=t / "router.pt"))),
    Case("interpret --output-dir is a file", "error", "output_dir: ",
         lambda t: (t / "f").write_text("x") and run_cli("interpret", world()["checkpoint"], "--dataset",
                                                         world()["pairs"], "--output-dir", t / "f")),
    Case("train --cache-dir is a file", "error", "cache_dir: ",
         lambda t: (t / "c").write_text("x") and run_cli(*[a if a != world()["cache"] else t / "c"
                                                         for a in train_args(t)])),
    Case("full disk while writing", "error", "no space left on the device", full_disk),
    # Pushes: only what the checkpoint owns, no local paths, one line when the Hub is out of reach.
    Case("push while offline", "error", "could not be pushed",
         lambda t: run_cli("push", copy_checkpoint(t), "org/smoe-rm")),
    Case("push a folder that is not a checkpoint", "error", "is not an hf_smoe checkpoint",
         lambda t: (t / "x").mkdir() or run_cli("push", t / "x", "org/smoe-rm")),
    Case("push a tokenizer file linked outside", "error", "outside the checkpoint", symlinked_tokenizer),
    Case("push a card naming a local path", "error", "names the local path", card_with_local_path),
    Case("saved config carries no local backbone path", "handled", "", saved_config_has_no_local_path,
         check_backbone_name),
    # API: loss weights, routing weights, prompt lengths, routers, Hedge, training and metrics.
    Case("config lambda_global=inf", "error", "lambda_global: loss weights must be finite", loss_config(lambda_global=INF)),
    Case("config lambda_div=nan", "error", "lambda_div: loss weights must be finite", loss_config(lambda_div=NAN)),
    Case("config lambda_local=-1", "error", "lambda_local: loss weights must be finite", loss_config(lambda_local=-1)),
    Case("config lambda_local='high'", "error", "lambda_local", loss_config(lambda_local="high")),
    Case("config preset unknown", "error", "preset: unknown preset",
         lambda t: SMoERewardConfig(backbone_config=world()["model"].config.backbone_config, preset="sparce")),
    Case("loss lambda_global=inf", "error", "lambda_global", loss_call(lambda_global=INF)),
    Case("loss routing of the wrong shape", "error", "differs from routing_weights",
         lambda t: moe_preference_loss(torch.full((4, 3), 1 / 3), torch.zeros(4, 2), torch.zeros(4, 2),
                                       lambda_local=0, lambda_global=0, lambda_div=0, lambda_uniform=0)),
    Case("forward routing_weights of the wrong size", "error", "routing_weights: expected shape",
         forward(routing_weights=torch.ones(5) / 5)),
    Case("forward routing_weights NaN", "error", "routing_weights: contains NaN",
         forward(routing_weights=torch.tensor([NAN, 0.5, 0.5]))),
    Case("forward prompt_lengths count", "error", "prompt_lengths: 3 values for a batch of 2",
         forward(prompt_lengths=torch.tensor([1, 1, 1]))),
    Case("forward prompt_lengths zero", "error", "prompt_lengths: each must be >= 1",
         forward(prompt_lengths=torch.tensor([0, 1]))),
    Case("router file damaged", "error", "router: ", damaged_router),
    Case("router file with NaN weights", "error", "holds NaN or infinite weights", nan_router),
    Case("router file for other experts", "error", "adapted on different experts", other_experts_router),
    Case("router file missing", "error", "router: no such file",
         lambda t: load_router(t / "none.safetensors", world()["model"])),
    Case("router file that is a checkpoint", "error", "is not an hf_smoe router file",
         lambda t: load_router(world()["checkpoint"] / "model.safetensors", world()["model"])),
    Case("hedge tau 0", "error", "tau: must be a finite number > 0", hedge(tau=0.0)),
    Case("hedge tau nan", "error", "tau: must be a finite number > 0", hedge(tau=NAN)),
    Case("hedge tau inf", "error", "tau", lambda t: hedge_targets(torch.full((2, 2), 0.5), torch.zeros(2, 2), INF)),
    Case("hedge epochs 0", "error", "epochs: must be an integer >= 1", hedge(epochs=0)),
    Case("hedge on no pairs", "error", "no labeled pairs",
         lambda t: hedge_adapt(world()["model"].head, tiny_features().select([]))),
    Case("train_head epochs 0", "error", "epochs: must be a number > 0",
         lambda t: train_head(world()["model"], {"train": tiny_features(), "validation": tiny_features(8)},
                              str(t), seed=0, epochs=0)),
    Case("training that diverges is refused", "error", "training diverged", diverging_training),
    Case("category metrics of one category", "error", "at least two categories",
         lambda t: category_metrics(world()["model"].head, tiny_features(categories=("x",)),
                                    tiny_features(categories=("x",)))),
    Case("evaluation with one category skips coverage", "handled", "", one_category_metrics, check_one_category),
]


def with_config(tmp_path, **changes) -> Path:
    """A copy of the checkpoint whose config.json was edited (keys set, or removed when None)."""
    folder = copy_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def one_prompt_two_categories(tmp_path):
    pairs = [{"prompt": [{"role": "user", "content": "hello how are you"}], "chosen": f"good {i}",
              "rejected": f"bad {i}", "category": "ab"[i % 2]} for i in range(4)]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return run_cli(*[a if a != world()["pairs"] else tmp_path / "one.jsonl"
                     for a in eval_args(world()["checkpoint"], "--output", tmp_path / "e.json")]), tmp_path


def check_no_category_metrics(outcome):
    result, folder = outcome
    assert result.code == 0
    written = json.loads((folder / "e.json").read_text())
    assert written["results"]["pairs"] == 4 and "category_coverage" not in written["results"]
    assert written["job"]["dataset"].endswith("one.jsonl") and written["command"]


def damaged_metadata(tmp_path, **changes):
    def run(tmp_path):
        from safetensors import safe_open

        with safe_open(str(world()["router"]), "pt") as handle:
            metadata = handle.metadata() | changes
        tensors = load_file(world()["router"])
        save_file(tensors, tmp_path / "r.safetensors", metadata={k: v for k, v in metadata.items() if v is not None})
        return load_router(tmp_path / "r.safetensors", world()["model"])
    return run


def hh_variants(tmp_path):
    """HH records as released, stripped of the leading blank line, and with Windows line ends."""
    from hf_smoe.data.loading import load_pairs

    released = [{"chosen": "\n\nHuman: how do I cook rice?\n\nAssistant: Rinse it, then simmer it.",
                 "rejected": "\n\nHuman: how do I cook rice?\n\nAssistant: Buy bread."}] * 3
    variants = {"released": released,
                "stripped": [{k: v.strip() for k, v in r.items()} for r in released],
                "crlf": [{k: v.replace("\n", "\r\n") for k, v in r.items()} for r in released]}
    loaded = {}
    for name, records in variants.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        loaded[name] = load_pairs(tmp_path / f"{name}.jsonl").to_list()
    return loaded


def check_hh_variants(loaded):
    expected = {"prompt": [{"role": "user", "content": "how do I cook rice?"}], "chosen": "Rinse it, then simmer it.",
                "rejected": "Buy bread."}
    for name, pairs in loaded.items():
        assert len(pairs) == 3 and {k: pairs[0][k] for k in expected} == expected, name


def text_file(name, data: bytes):
    def run(tmp_path):
        from hf_smoe.data.loading import load_pairs

        (tmp_path / name).write_bytes(data)
        return load_pairs(tmp_path / name)
    return run


def existing_interpretation(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "interpretation.json").write_text('{"mine": true}')
    return run_cli("interpret", world()["checkpoint"], "--dataset", world()["pairs"], "--output-dir", tmp_path / "out")


def existing_chart(tmp_path):
    (tmp_path / "r.png").write_bytes(b"my picture")
    return run_cli(*adapt_args(output=tmp_path / "r.safetensors"))


def reproduce_without_data_root(tmp_path):
    with mock.patch.dict(os.environ):
        os.environ.pop("HF_SMOE_DATA", None)
        return run_cli("reproduce", "table1", "--datasets", "hh", "--output-dir", tmp_path / "out")


def heads_only_push_of_a_local_backbone(tmp_path):
    folder = tmp_path / "heads"
    SMoERewardModel.from_backbone(world()["backbone"], num_experts=2).save_pretrained(folder, heads_only=True)
    return push_checkpoint(folder, "org/heads")


CASES_FOUND_LATER = [
    Case("train --heads_only --push_to_hub with a local backbone", "error",
         "heads_only: --push_to_hub with --heads_only needs the backbone on the Hub",
         lambda t: run_cli(*train_args(t, "--heads_only", "--push_to_hub", "--hub_model_id", "org/heads"))),
    Case("push a heads-only checkpoint whose backbone is a local folder", "error",
         "is a heads-only checkpoint whose backbone is the local folder",
         heads_only_push_of_a_local_backbone),
    Case("reproduce without --data-root or HF_SMOE_DATA", "error", "data_root: the reproductions read HH-RLHF",
         reproduce_without_data_root),
    Case("steer --prompt empty", "error", "prompt: empty text",
         lambda t: run_cli("steer", world()["checkpoint"], "--expert", 0, "--weight", 0.5, "--prompt", " ",
                           "--responses", "hi")),
    Case("steer --responses empty text", "error", "response: empty text",
         lambda t: run_cli("steer", world()["checkpoint"], "--expert", 0, "--weight", 0.5, "--prompt", "hello",
                           "--responses", "")),
    Case("eval --split with a local file", "error", "--split: ",
         lambda t: run_cli(*eval_args(world()["checkpoint"], "--split", "validation"))),
    Case("train --seed -1", "error", "seed: must be between 0 and 2**32 - 1",
         lambda t: run_cli(*train_args(t, "--seed", -1))),
    Case("reproduce --seeds huge", "error", "--seeds: must be an integer between 0 and 2**32 - 1",
         lambda t: run_cli("reproduce", "table1", "--seeds", 2**40)),
    Case("interpret --output-dir with an earlier interpretation", "error", "pass --overwrite", existing_interpretation),
    Case("adapt over an existing chart", "error", "r.png exists; pass --overwrite", existing_chart),
    Case("from_backbone num_expert typo", "error", "num_expert: not an option of the model's config; did you mean 'num_experts'",
         lambda t: SMoERewardModel.from_backbone(world()["backbone"], num_expert=3)),
    Case("HH transcripts stripped or with CRLF", "handled", "", hh_variants, check_hh_variants),
    Case("checkpoint config num_experts edited", "error", "do not fit its config.json",
         lambda t: run_cli(*eval_args(with_config(t, num_experts=4)))),
    Case("checkpoint config num_experts removed", "error", "do not fit its config.json",
         lambda t: run_cli(*eval_args(with_config(t, num_experts=None)))),
    Case("checkpoint config preset unknown", "error", "preset: unknown preset",
         lambda t: run_cli(*eval_args(with_config(t, preset="dense")))),
    Case("eval one prompt in two categories", "warning", "category metrics left out", one_prompt_two_categories,
         check_no_category_metrics),
    Case("data file in Latin-1", "error", "line 1 is not UTF-8 text",
         text_file("latin1.jsonl", '{"prompt": "Grüße", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))),
    Case("data file with a lone surrogate", "error", "not valid Unicode",
         text_file("surrogate.jsonl", b'{"prompt": "hi", "chosen": "a\\ud800", "rejected": "b"}\n')),
    Case("interpret --generator mistyped", "error", "generator: ",
         lambda t: run_cli("interpret", world()["checkpoint"], "--dataset", world()["pairs"], "--generator",
                           "./no-such-model", "--output-dir", t / "out")),
    Case("bench train --num-pairs 1", "error", "num_pairs: the train benchmark",
         lambda t: run_cli("bench", "train", "--num-pairs", 1, "--backbone", world()["backbone"], "--output-dir", t)),
    Case("bench --output-dir is a file", "error", "--output-dir: ",
         lambda t: (t / "f").write_text("x") and run_cli("bench", "embed", "--backbone", world()["backbone"],
                                                         "--output-dir", t / "f")),
    Case("router metadata hidden size not a number", "error", "damaged metadata",
         damaged_metadata(None, router_hidden_size="abc")),
    Case("router metadata unknown activation", "error", "damaged metadata",
         damaged_metadata(None, router_activation="swish9")),
    Case("router metadata without routing", "error", "damaged metadata", damaged_metadata(None, routing=None)),
    Case("load_pairs on a list", "error", "expected a Hub name, a file or folder path, or a datasets.Dataset",
         lambda t: __import__("hf_smoe.data.loading").data.load_pairs([{"prompt": "a", "chosen": "b", "rejected": "c"}])),
    Case("forward 1-D input_ids", "error", "input_ids: expected a (batch, length) tensor",
         lambda t: world()["model"](input_ids=torch.tensor([1, 2, 3]))),
    Case("forward attention_mask of another shape", "error", "attention_mask: shape",
         lambda t: world()["model"](input_ids=torch.ones(2, 5, dtype=torch.long),
                                    attention_mask=torch.ones(2, 4, dtype=torch.long))),
    Case("mixture_reward with other K", "error", "routing_weights: 2 weights for 3 experts",
         lambda t: __import__("hf_smoe").modeling.modeling_smoe.mixture_reward(torch.ones(1, 2), torch.ones(1, 3))),
    Case("split_pairs NaN fraction", "error", "must be >= 0",
         lambda t: __import__("hf_smoe.data.loading").data.split_pairs(generate_preference_set(16, seed=0), test=NAN)),
]


@parametrize(CASES + CASES_FOUND_LATER)
def test_cli_and_api_failure(case, tmp_path):
    check_case(case, tmp_path)


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only failures the user can fix become one line; an internal error propagates with its traceback."""
    with mock.patch("hf_smoe.evaluation.evaluate.behaviour_metrics", side_effect=KeyError("internal")):
        with pytest.raises(KeyError, match="internal"):
            run_cli(*eval_args(world()["checkpoint"], "--output", tmp_path / "e.json"))


KILL_AFTER_SAVE = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer
    target, where = float(sys.argv[1]), sys.argv[2]  # the epoch whose checkpoint the kill hits
    original_save, original_rng = Trainer._save_checkpoint, Trainer._save_rng_state

    def save_then_die(self, *args, **kwargs):
        original_save(self, *args, **kwargs)
        if where == "after" and self.state.epoch >= target:
            os.kill(os.getpid(), signal.SIGKILL)

    def die_mid_save(self, *args, **kwargs):  # model and optimizer written, trainer_state.json not yet
        if where == "during" and self.state.epoch >= target:
            os.kill(os.getpid(), signal.SIGKILL)
        original_rng(self, *args, **kwargs)

    Trainer._save_checkpoint, Trainer._save_rng_state = save_then_die, die_mid_save
    from hf_smoe.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after", "during"])
def test_a_killed_train_resumes_bit_identical(tmp_path, where):
    """`kill -9` after the second epoch's checkpoint (or in the middle of writing it), then the same command again:
    the run resumes from its last complete epoch (2, or 1) and ends with exactly the weights of an uninterrupted
    run."""
    w = world()

    def args(output):
        return [str(a) for a in ("train", "--dataset", w["pairs"], "--backbone", w["backbone"], "--max-length", 64,
                                 "--epochs", 4, "--num-experts", 3, "--cache-dir", w["cache"], "--output-dir", output)]

    assert run_cli(*args(tmp_path / "reference")).code == 0
    steps_per_epoch = json.loads((tmp_path / "reference" / "results.json").read_text())  # sanity: the run finished
    assert steps_per_epoch["results"]["accuracy"] >= 0
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, "2", where, *args(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    staging = tmp_path / ".run.partial"
    assert staging.is_dir() and not (tmp_path / "run").exists()  # nothing half-written in place
    states = [c / "trainer_state.json" for c in (staging / "trainer").glob("checkpoint-*")]
    complete = [json.loads(state.read_text())["epoch"] for state in states if state.is_file()]
    assert complete == ([2.0] if where == "after" else [1.0])  # the resume point; a cut-short checkpoint is ignored
    resumed = run_cli(*args(tmp_path / "run"))
    assert resumed.code == 0 and "Resuming the interrupted run" in resumed.stdout
    reference, result = (load_file(tmp_path / name / "model.safetensors") for name in ("reference", "run"))
    assert reference.keys() == result.keys()
    for name in reference:
        assert torch.equal(reference[name], result[name]), name
    assert not staging.exists()
    log = json.loads((tmp_path / "run" / "results.json").read_text())
    assert log["results"]["accuracy"] == steps_per_epoch["results"]["accuracy"]
    assert math.isfinite(log["results"]["loss"])


REAL_PROCESS_CASES = {
    "argument": (["train", "--dataset", "pairs.jsonl", "--output-dir", "out", "--epochs", "0"], "epochs"),
    "data file": (["embed", "--dataset", "{broken}"], "line 2"),
    "checkpoint": (["eval", "{damaged}", "--dataset", "{pairs}"], "holds NaN or infinite weights"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_PROCESS_CASES))
def test_a_user_error_in_a_real_process_is_one_line(tmp_path, name):
    """The `smoe` console script in its own process: exit status 2, one stderr line, no traceback."""
    (tmp_path / "broken.jsonl").write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", \n')
    files = {"broken": tmp_path / "broken.jsonl", "pairs": world()["pairs"],
             "damaged": with_weights(tmp_path, nan_router_weights) if name == "checkpoint" else ""}
    argv, message = REAL_PROCESS_CASES[name]
    smoe = Path(sys.executable).with_name("smoe")
    result = subprocess.run([str(smoe), *(arg.format(**files) for arg in argv)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("smoe ")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "error: " in errors[0] and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


KILL_EMBED = textwrap.dedent("""
    import os, signal, sys
    from hf_smoe.features import EmbeddingCache
    original, written = EmbeddingCache._write, []

    def write_then_die(self, rows):
        original(self, rows)
        written.append(len(rows))
        if len(written) == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    EmbeddingCache._write = write_then_die
    from hf_smoe.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def cached_rows(cache_dir) -> dict:
    """{text key: (prompt vector, response vector)} of everything an embedding cache folder holds."""
    from hf_smoe.features import EmbeddingCache

    model = SMoERewardModel.from_backbone(world()["backbone"], num_experts=3)
    store = EmbeddingCache(model, word_tokenizer("chatml"), cache_dir=cache_dir, max_length=64,
                           show_progress=False).store
    keys = np.concatenate([shard.column("key").to_numpy(zero_copy_only=False) for shard in store._open()[2]])
    stored = store.read(store.rows(keys.astype("S64")))
    return {key: (stored["prompt_embedding"][row], stored["response_embedding"][row]) for row, key in enumerate(keys)}


@pytest.mark.slow
def test_a_killed_embed_resumes_bit_identical(tmp_path):
    """`smoe embed` killed with SIGKILL after its first shard, then run again: it embeds only what is missing and
    the cache ends bit-identical to an uninterrupted run's."""
    generate_preference_set(200, seed=3).to_json(tmp_path / "pairs.jsonl")

    def args(cache):
        return [str(a) for a in ("embed", "--dataset", tmp_path / "pairs.jsonl", "--backbone", world()["backbone"],
                                 "--max-length", 64, "--cache-dir", cache)]

    assert run_cli(*args(tmp_path / "reference")).code == 0
    killed = subprocess.run([sys.executable, "-c", KILL_EMBED, *args(tmp_path / "run")], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    reference = cached_rows(tmp_path / "reference")
    assert 512 <= len(cached_rows(tmp_path / "run")) < len(reference)  # the first shard (>= 512 texts) survived
    assert run_cli(*args(tmp_path / "run")).code == 0
    resumed = cached_rows(tmp_path / "run")
    assert reference.keys() == resumed.keys()
    for key, (prompt, response) in reference.items():
        assert np.array_equal(prompt, resumed[key][0]) and np.array_equal(response, resumed[key][1]), key


@pytest.mark.slow
def test_resume_from_checkpoint_flag_after_a_kill_is_bit_identical(tmp_path):
    """`--resume_from_checkpoint PATH` (the Trainer's own flag) after `kill -9`: the final weights are exactly those
    of an uninterrupted run."""
    w = world()

    def args(output, *extra):
        return [str(a) for a in ("train", "--dataset", w["pairs"], "--backbone", w["backbone"], "--max_length", 64,
                                 "--num_train_epochs", 3, "--num_experts", 3, "--cache_dir", w["cache"],
                                 "--output_dir", output, *extra)]

    assert run_cli(*args(tmp_path / "reference")).code == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, "1", "after", *args(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = next((tmp_path / ".run.partial" / "trainer").glob("checkpoint-*"))
    assert run_cli(*args(tmp_path / "run", "--resume_from_checkpoint", checkpoint)).code == 0
    reference, result = (load_file(tmp_path / name / "model.safetensors") for name in ("reference", "run"))
    for name in reference:
        assert torch.equal(reference[name], result[name]), name


def test_a_recipe_and_the_same_flags_give_the_same_run(tmp_path):
    """`smoe train recipe.yaml` and the same settings as flags: identical metrics; flags after the recipe win."""
    w = world()
    settings = {"dataset": str(w["pairs"]), "backbone": w["backbone"], "max_length": 64, "num_train_epochs": 1,
                "num_experts": 2, "cache_dir": str(w["cache"]), "learning_rate": 1e-3, "lambda_div": 0.5,
                "per_device_train_batch_size": 32}
    flags = [str(a) for key, value in settings.items() for a in (f"--{key}", value)]
    assert run_cli("train", *flags, "--output_dir", tmp_path / "flags").code == 0
    (tmp_path / "recipe.yaml").write_text("".join(f"{key}: {value}\n" for key, value in settings.items())
                                          + f"output_dir: {tmp_path / 'recipe'}\n")
    assert run_cli("train", tmp_path / "recipe.yaml").code == 0
    by_flags, by_recipe = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("flags", "recipe"))
    assert by_flags["results"] == by_recipe["results"]
    assert by_recipe["job"]["training"]["learning_rate"] == 1e-3 and by_recipe["job"]["model"]["lambda_div"] == 0.5
    assert run_cli("train", tmp_path / "recipe.yaml", "--lambda_div", 0.25, "--output_dir", tmp_path / "o").code == 0
    assert json.loads((tmp_path / "o" / "results.json").read_text())["job"]["model"]["lambda_div"] == 0.25


def test_a_recipe_with_an_unknown_key_is_one_line(tmp_path):
    (tmp_path / "recipe.yaml").write_text("dataset: x\noutput_dir: y\nnum_expert: 3\n")
    result = run_cli("train", tmp_path / "recipe.yaml")
    assert result.code == 2 and "unknown key(s) ['num_expert']" in result.stderr and "Traceback" not in result.stderr
