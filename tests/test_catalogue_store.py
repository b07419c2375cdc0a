"""Failure catalogue of what the training jobs read and write: `smoe tune-backbone` and `smoe train --tune_layers`
(layer counts, backbone families, outputs, interruptions, damaged hidden-state shards, resuming), heads-only
checkpoints whose backbone moved or changed, checkpoints missing a file, the feature store on a full disk, in a
read-only folder, under two writers and with a damaged or deleted pair file, and SIGINT / SIGTERM sent to real
`smoe` processes.

Every check compares with a result computed independently: an uninterrupted run's weights, a clean cache's
vectors, the intact checkpoint's evaluation, or files byte for byte.
"""

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from catalogue import Case, CliResult, check_case, parametrize, run_cli
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2Model, Trainer

from hf_smoe import SMoERewardModel
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.features import EmbeddingCache, HiddenStateCache, training_encoding
from hf_smoe.features import store as feature_store
from hf_smoe.features.store import MANIFEST
from hf_smoe.testing import save_tiny_backbone, word_tokenizer
from hf_smoe.training.backbone_tuning import TopLayersTrainer
from hf_smoe.training.job import save_checkpoint


@functools.cache
def world() -> dict:
    """A tiny two-layer Llama backbone, a BERT and a GPT-2 of the same width, 56 labelled pairs and one feature cache
    shared by the reference runs (each case copies what it damages)."""
    root = Path(tempfile.mkdtemp(prefix="smoe-catalogue-store-"))
    generate_preference_set(24, seed=2, responses_per_prompt=3).to_json(root / "pairs.jsonl")
    return {"root": root, "backbone": save_tiny_backbone(root / "backbone", "llama"),
            "bert": save_tiny_backbone(root / "bert", "bert"), "gpt2": save_tiny_gpt2(root / "gpt2"),
            "pairs": root / "pairs.jsonl", "cache": root / "cache"}


def save_tiny_gpt2(folder: Path) -> str:
    """A GPT-2-style decoder (blocks in `h`, final norm `ln_f`) with the ChatML word tokenizer."""
    tokenizer = word_tokenizer("chatml")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tune_args(output, *extra, backbone=None, cache=None):
    """`smoe tune-backbone` of the top layer for two steps."""
    w = world()
    return ("tune-backbone", "--dataset", w["pairs"], "--backbone", backbone or w["backbone"], "--max_length", 64,
            "--cache_dir", cache or w["cache"], "--layers", 1, "--max_steps", 2, "--per_device_train_batch_size", 4,
            "--logging_strategy", "no", "--disable_tqdm", "True", "--output_dir", output, *extra)


def train_args(output, *extra, backbone=None, cache=None):
    """`smoe train` of two experts for two epochs (a Trainer checkpoint after each)."""
    w = world()
    return ("train", "--dataset", w["pairs"], "--backbone", backbone or w["backbone"], "--max_length", 64,
            "--num_train_epochs", 2, "--num_experts", 2, "--cache_dir", cache or w["cache"],
            "--logging_strategy", "no", "--disable_tqdm", "True", "--output_dir", output, *extra)


def eval_args(checkpoint, output, cache=None):
    w = world()
    return ("eval", checkpoint, "--dataset", w["pairs"], "--cache-dir", cache or w["cache"], "--output", output)


def finished(result: CliResult, folder=None) -> Path:
    assert result.code == 0, result.stderr[-2000:]
    return folder


@functools.cache
def reference(name: str) -> Path:
    """The uninterrupted runs the cases compare with: `tuned` (tune-backbone), `tuned_mixture` (train
    --tune_layers 1), `trained` (train), `heads` (train --heads_only, on its own copy of the backbone)."""
    root = world()["root"]
    if name == "tuned":
        return finished(run_cli(*tune_args(root / name)), root / name)
    if name == "tuned_mixture":
        return finished(run_cli(*train_args(root / name, "--tune_layers", 1)), root / name)
    if name == "trained":
        return finished(run_cli(*train_args(root / name)), root / name)
    backbone = shutil.copytree(world()["backbone"], root / "heads-backbone")
    return finished(run_cli(*train_args(root / name, "--heads_only", backbone=backbone)), root / name)


@functools.cache
def checkpoint() -> dict:
    """A saved 3-expert checkpoint and its evaluation on the pairs (which fills the shared cache)."""
    root = world()["root"]
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(world()["backbone"], num_experts=3)
    save_checkpoint(model, word_tokenizer("chatml"), root / "checkpoint", training_encoding(64))
    finished(run_cli(*eval_args(root / "checkpoint", root / "checkpoint-eval.json")))
    return {"folder": root / "checkpoint", "results": evaluation(root / "checkpoint-eval.json")}


@functools.cache
def heads_evaluation() -> dict:
    root = world()["root"]
    finished(run_cli(*eval_args(reference("heads"), root / "heads-eval.json")))
    return evaluation(root / "heads-eval.json")


def evaluation(path) -> dict:
    return json.loads(Path(path).read_text())["results"]


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def assert_same_weights(folder, expected_folder):
    got, expected = weights(folder), weights(expected_folder)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def same_as(name: str):
    """A check: the run finished with exactly the weights of the uninterrupted reference run `name`, and left no
    staging folder."""
    def check(outcome):
        result, folder = outcome
        assert result.code == 0, result.stderr[-2000:]
        assert_same_weights(folder, reference(name))
        assert not folder.with_name(f".{folder.name}.partial").exists()
    return check


# `smoe tune-backbone` and `smoe train --tune_layers`: layer counts and backbone families.

def all_layers_tuned(tmp_path):
    return run_cli(*tune_args(tmp_path / "out", "--layers", 2)), tmp_path / "out"


def check_all_layers_tuned(outcome):
    """k = L: the states entering the first layer are the token embeddings, which stay; both layers train."""
    result, folder = outcome
    assert result.code == 0, result.stderr[-2000:]
    tuned, original = weights(folder), load_file(Path(world()["backbone"]) / "model.safetensors")
    assert torch.equal(tuned["embed_tokens.weight"], original["embed_tokens.weight"])
    for layer in (0, 1):
        name = f"layers.{layer}.mlp.down_proj.weight"
        assert not torch.equal(tuned[name], original[name]), name
    assert evaluation(folder / "results.json")["layers_tuned"] == 2


def frozen_with_zero_layers(tmp_path):
    return run_cli(*train_args(tmp_path / "out", "--tune_layers", 0)), tmp_path / "out"


def with_backbone(name):
    return lambda t: run_cli(*tune_args(t / "out", backbone=world()[name]))


def train_tuning(*extra, backbone="backbone"):
    return lambda t: run_cli(*train_args(t / "out", *extra, backbone=world()[backbone]))


# Outputs onto what the run reads.

def copied(tmp_path, name: str) -> Path:
    """This case's own copy of the world's `name` (made once)."""
    if not (tmp_path / name).exists():
        shutil.copytree(world()[name], tmp_path / name)
    return tmp_path / name


def tuned_backbone_as_its_own_output(tmp_path):
    """A tuned backbone (a backbone folder with hf_smoe's results.json) tuned again into itself, with --overwrite."""
    folder = Path(shutil.copytree(reference("tuned"), tmp_path / "tuned"))
    return run_cli(*tune_args(folder, "--overwrite", backbone=folder))


def dataset_folder_as_output(tmp_path):
    (tmp_path / "data").mkdir()
    pairs = shutil.copy(world()["pairs"], tmp_path / "data")
    return run_cli(*[pairs if a == world()["pairs"] else a for a in tune_args(tmp_path / "data", "--overwrite")])


# Interruptions and reruns of `smoe tune-backbone`.

def interrupt(owner, name: str, after: int = 1):
    """Patches `owner.name` to run, then raise KeyboardInterrupt (Ctrl-C) on its `after`-th call."""
    original, calls = getattr(owner, name), []

    def stopping(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == after:
            raise KeyboardInterrupt
        return result

    return mock.patch.object(owner, name, stopping)


def interrupted_then_rerun(args, owner, name: str):
    """The command stopped by Ctrl-C inside `owner.name`, then run again: (the rerun's result, its output)."""
    def run(tmp_path):
        output = tmp_path / "out"
        with interrupt(owner, name):
            stopped = run_cli(*args(tmp_path, output))
        assert stopped.code == 130 and "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
        assert not output.exists()
        return run_cli(*args(tmp_path, output)), output
    return run


def tune_in(cache_of):
    """tune_args into an output, with the cache `cache_of(tmp_path)` (None: the shared one)."""
    return lambda tmp_path, output: tune_args(output, cache=cache_of(tmp_path))


def rerun_over_stale_staging(tmp_path):
    """An interrupted run's staging folder holds old weights and a stray file; the rerun must publish neither."""
    staging = tmp_path / ".out.partial"
    (staging / "trainer").mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"half-written weights")
    (staging / "adapter_config.json").write_text("{}")
    return run_cli(*tune_args(tmp_path / "out")), tmp_path / "out"


def check_clean_publish(outcome):
    same_as("tuned")(outcome)
    _, folder = outcome
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference("tuned").iterdir())


def hidden_state_shards(cache) -> list:
    """The hidden-state cache's shard folders under a cache root."""
    return sorted(shard for shard in Path(cache).glob("*/shard-*")
                  if "states" in json.loads((shard / "dataset_info.json").read_text())["features"])


def rescramble(shard):
    path = next(shard.glob("*.arrow"))
    data = bytearray(path.read_bytes())
    data[-300:-200] = bytes(reversed(data[-300:-200]))  # same size, other values
    path.write_bytes(bytes(data))


def truncate(shard):
    path = next(shard.glob("*.arrow"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damaged_hidden_states(args, damage, name):
    """A copy of the shared cache (filled by the reference run `name`) with its first hidden-state shard damaged,
    then the command on it."""
    def run(tmp_path):
        reference(name)
        cache = Path(shutil.copytree(world()["cache"], tmp_path / "cache"))
        damage(hidden_state_shards(cache)[0])
        return run_cli(*args(tmp_path / "out", cache=cache)), tmp_path / "out"
    return run


# Resuming `smoe train`.

@functools.cache
def interrupted_training() -> Path:
    """A Trainer checkpoint of the reference `trained` job, stopped by Ctrl-C after its first epoch."""
    root = world()["root"]
    with interrupt(Trainer, "_save_checkpoint"):
        assert run_cli(*train_args(root / "stopped")).code == 130
    return next((root / ".stopped.partial" / "trainer").glob("checkpoint-*"))


def resumed_elsewhere(tmp_path):
    """--resume_from_checkpoint of the same job's checkpoint, into another output folder."""
    staging = Path(shutil.copytree(interrupted_training().parent.parent, tmp_path / ".stopped.partial"))
    path = staging / "trainer" / interrupted_training().name
    return run_cli(*train_args(tmp_path / "out", "--resume_from_checkpoint", path)), tmp_path / "out"


def cut_short_checkpoint(tmp_path):
    folder = Path(shutil.copytree(interrupted_training(), tmp_path / "checkpoint-17"))
    (folder / "trainer_state.json").unlink()
    return run_cli(*train_args(tmp_path / "out", "--resume_from_checkpoint", folder))


def tuned_mixture_resumed(tmp_path, output):
    return train_args(output, "--tune_layers", 1)


# Heads-only checkpoints and their backbone.

def placed_heads(tmp_path) -> tuple:
    """The reference heads-only checkpoint and its backbone copied into tmp_path, the checkpoint naming the copy."""
    heads = Path(shutil.copytree(reference("heads"), tmp_path / "heads"))
    backbone = Path(shutil.copytree(world()["root"] / "heads-backbone", tmp_path / "backbone"))
    point_heads_at(heads, backbone)
    return heads, backbone


def point_heads_at(heads: Path, backbone: Path):
    config = json.loads((heads / "config.json").read_text())
    config["backbone_source"]["name_or_path"] = str(backbone)
    (heads / "config.json").write_text(json.dumps(config))


def heads_eval(change):
    """The heads-only checkpoint evaluated after `change(tmp_path, heads, backbone)`."""
    def run(tmp_path):
        heads, backbone = placed_heads(tmp_path)
        change(tmp_path, heads, backbone)
        return run_cli(*eval_args(heads, tmp_path / "eval.json"))
    return run


def moved(tmp_path, heads, backbone):
    backbone.rename(tmp_path / "moved")


def moved_and_repointed(tmp_path, heads, backbone):
    backbone.rename(tmp_path / "moved")
    point_heads_at(heads, tmp_path / "moved")


def emptied(tmp_path, heads, backbone):
    shutil.rmtree(backbone)
    backbone.mkdir()


def replaced_by(kind, **options):
    def change(tmp_path, heads, backbone):
        shutil.rmtree(backbone)
        save_tiny_backbone(backbone, kind, **options)
    return change


def truncated_weights(tmp_path, heads, backbone):
    path = backbone / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def check_heads_results(outcome):
    result, path = outcome
    assert result.code == 0, result.stderr[-2000:]
    assert evaluation(path) == heads_evaluation()


def steer_on_replaced_backbone(tmp_path):
    heads, backbone = placed_heads(tmp_path)
    replaced_by("llama", seed=1)(tmp_path, heads, backbone)
    return run_cli("steer", heads, "--expert", 0, "--weight", 0.5, "--prompt", "hello", "--responses", "hi")


# Checkpoints missing a file.

def without(name: str):
    """The checkpoint copied without `name`, evaluated."""
    def run(tmp_path):
        folder = Path(shutil.copytree(checkpoint()["folder"], tmp_path / "checkpoint"))
        (folder / name).unlink()
        return run_cli(*eval_args(folder, tmp_path / "eval.json"))
    return run


def evaluated_without(name: str):
    """`without(name)` and where its evaluation is written."""
    return lambda tmp_path: (without(name)(tmp_path), tmp_path / "eval.json")


def heads_without_weights(tmp_path):
    heads, _ = placed_heads(tmp_path)
    (heads / "model.safetensors").unlink()
    return run_cli(*eval_args(heads, tmp_path / "eval.json"))


def check_checkpoint_results(outcome):
    result, path = outcome
    assert result.code == 0, result.stderr[-2000:]
    assert evaluation(path) == checkpoint()["results"]


# The feature store: full disk, read-only folder, pair files.

def embed_args(cache, dataset=None):
    return ("embed", "--dataset", dataset or world()["pairs"], "--backbone", world()["backbone"], "--max-length", 64,
            "--cache-dir", cache)


def leftovers(cache) -> list:
    return [path for path in Path(cache).rglob("*.partial")]


def failing_write_manifest(where):
    """`write_manifest` that fails with ENOSPC (a full disk) for folders `where(folder)` selects."""
    original = feature_store.write_manifest

    def write(folder, rows):
        if where(folder):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / MANIFEST))
        return original(folder, rows)

    return mock.patch.object(feature_store, "write_manifest", write)


def full_disk_on_a_shard(tmp_path):
    with failing_write_manifest(lambda folder: folder.name.startswith("shard-")):
        result = run_cli(*embed_args(tmp_path / "cache"))
    assert leftovers(tmp_path / "cache") == []  # nothing half-written keeps the space
    return result


def full_disk_on_the_pair_file(tmp_path):
    """The shards are written, the pair file is not: nothing half-written stays, and a rerun embeds no text."""
    with failing_write_manifest(lambda folder: folder.parent.name == "pairs"):
        result = run_cli(*embed_args(tmp_path / "cache"))
    assert leftovers(tmp_path / "cache") == []
    shards = sorted(p.name for p in tmp_path.glob("cache/*/shard-*"))
    with mock.patch.object(EmbeddingCache, "_forward", side_effect=AssertionError("embedded again")):
        assert run_cli(*embed_args(tmp_path / "cache")).code == 0
    assert sorted(p.name for p in tmp_path.glob("cache/*/shard-*")) == shards and shards
    return result


def read_only(root: Path):
    """The folder `root` as on a read-only mount: creating a folder or a file inside it fails with EROFS."""
    make_folder, open_file = os.mkdir, os.open
    inside = str(root.resolve())

    def refused(path):
        return str(Path(path).resolve()).startswith(inside)

    def mkdir(path, *args, **kwargs):
        if refused(path) and not os.path.exists(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return make_folder(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return open_file(path, flags, *args, **kwargs)

    return mock.patch.multiple(os, mkdir=mkdir, open=open_)


def evaluated_cache(tmp_path) -> Path:
    """A copy of the shared cache, which holds the checkpoint's features and pair file."""
    checkpoint()
    return Path(shutil.copytree(world()["cache"], tmp_path / "cache"))


def read_only_full_cache(tmp_path):
    cache = evaluated_cache(tmp_path)
    with read_only(cache):
        return run_cli(*eval_args(checkpoint()["folder"], tmp_path / "eval.json", cache)), tmp_path / "eval.json"


def read_only_cache_missing_texts(tmp_path):
    cache = evaluated_cache(tmp_path)
    generate_preference_set(8, seed=9, responses_per_prompt=2).to_json(tmp_path / "new.jsonl")
    before = sorted(cache.rglob("*"))
    with read_only(cache):
        result = run_cli(*embed_args(cache, tmp_path / "new.jsonl"))
    assert sorted(cache.rglob("*")) == before
    return result


def pair_files(cache) -> list:
    return sorted(Path(cache).glob("*/pairs/*"))


def damaged_pair_file(damage):
    """The checkpoint evaluated on a cache whose pair files went through `damage(folder)`."""
    def run(tmp_path):
        cache = evaluated_cache(tmp_path)
        for folder in pair_files(cache):
            damage(folder)
        return run_cli(*eval_args(checkpoint()["folder"], tmp_path / "eval.json", cache)), tmp_path / "eval.json"
    return run


def cut_short(folder):
    path = folder / "data.arrow"
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def miscounted(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(manifest | {"rows": manifest["rows"] + 1}))


def pairs_folder_deleted_between_runs(tmp_path):
    cache = evaluated_cache(tmp_path)
    for folder in cache.glob("*/pairs"):
        shutil.rmtree(folder)
    result = run_cli(*eval_args(checkpoint()["folder"], tmp_path / "eval.json", cache))
    assert pair_files(cache)  # written again
    return result, tmp_path / "eval.json"


def pairs_folder_deleted_mid_write(tmp_path):
    """`pairs/` removed (a cache cleanup) while the pair file is being written: it is written again."""
    cache = evaluated_cache(tmp_path)
    for folder in cache.glob("*/pairs"):
        shutil.rmtree(folder)
    original, deleted = feature_store.write_manifest, []

    def delete_then_write(folder, rows):
        if folder.parent.name == "pairs" and not deleted:
            deleted.append(folder)
            shutil.rmtree(folder.parent)
        return original(folder, rows)

    with mock.patch.object(feature_store, "write_manifest", delete_then_write):
        result = run_cli(*eval_args(checkpoint()["folder"], tmp_path / "eval.json", cache))
    assert deleted and leftovers(cache) == [] and pair_files(cache)
    return result, tmp_path / "eval.json"


CASES = [
    # Layer counts and backbone families.
    Case("tune-backbone --layers 0", "error", "layers: must be an integer from 1 to 2",
         lambda t: run_cli(*tune_args(t / "out", "--layers", 0))),
    Case("tune-backbone --layers -1", "error", "layers: must be an integer from 1 to 2 (the backbone has 2 layers)",
         lambda t: run_cli(*tune_args(t / "out", "--layers", -1))),
    Case("tune-backbone --layers = the layer count keeps the embeddings", "handled", "", all_layers_tuned,
         check_all_layers_tuned),
    Case("tune-backbone on a BERT encoder", "error", "backbone: BertModel has no `layers` list",
         with_backbone("bert")),
    Case("tune-backbone on a GPT-2 decoder", "error", "backbone: GPT2Model has no `layers` list and final `norm`",
         with_backbone("gpt2")),
    Case("train --tune_layers -1", "error", "tune_layers: must be an integer >= 0", train_tuning("--tune_layers", -1)),
    Case("train --tune_layers beyond the backbone", "error", "tune_layers: must be an integer from 1 to 2",
         train_tuning("--tune_layers", 3)),
    Case("train --tune_layers on a BERT encoder", "error", "tune_layers: needs a decoder backbone",
         train_tuning("--tune_layers", 1, backbone="bert")),
    Case("train --tune_layers on a GPT-2 decoder", "error", "GPT2Model has no `layers` list and final `norm`; "
         "--tune_layers tunes", train_tuning("--tune_layers", 1, backbone="gpt2")),
    Case("train --tune_layers with --heads_only", "error", "heads_only: --tune_layers changes the backbone",
         train_tuning("--tune_layers", 1, "--heads_only")),
    Case("train --tune_layers 0 is the frozen backbone", "handled", "", frozen_with_zero_layers, same_as("trained")),
    # Outputs onto what the run reads.
    Case("tune-backbone --output_dir is the backbone folder", "error", "is or holds the backbone",
         lambda t: run_cli(*tune_args(copied(t, "backbone"), "--overwrite", backbone=copied(t, "backbone")))),
    Case("tune-backbone into the tuned backbone it reads", "error", "is or holds the backbone",
         tuned_backbone_as_its_own_output),
    Case("tune-backbone --output_dir is the data file", "error", "is a file",
         lambda t: run_cli(*tune_args(world()["pairs"]))),
    Case("tune-backbone --output_dir holds the data file", "error", "is or holds the dataset",
         dataset_folder_as_output),
    Case("tune-backbone --output_dir is the cache", "error", "is or holds the feature cache",
         lambda t: (t / "cache").mkdir() or run_cli(*tune_args(t / "cache", "--overwrite", cache=t / "cache"))),
    # Interruptions, reruns and damaged hidden states.
    Case("tune-backbone stopped mid-training, then rerun", "handled", "",
         interrupted_then_rerun(tune_in(lambda t: None), TopLayersTrainer, "training_step"), same_as("tuned")),
    Case("tune-backbone stopped while caching states, then rerun", "handled", "",
         interrupted_then_rerun(tune_in(lambda t: t / "cache"), HiddenStateCache, "_write"), same_as("tuned")),
    Case("tune-backbone rerun over a stale staging folder", "handled", "", rerun_over_stale_staging,
         check_clean_publish),
    Case("tune-backbone on a rescrambled hidden-state shard", "warning", "damaged shard(s) shard-00000",
         damaged_hidden_states(tune_args, rescramble, "tuned"), same_as("tuned")),
    Case("train --tune_layers on a truncated hidden-state shard", "warning", "does not match its checksum",
         damaged_hidden_states(lambda output, cache: train_args(output, "--tune_layers", 1, cache=cache), truncate,
                               "tuned_mixture"), same_as("tuned_mixture")),
    Case("train --tune_layers stopped after an epoch resumes", "handled", "",
         interrupted_then_rerun(tuned_mixture_resumed, Trainer, "_save_checkpoint"), same_as("tuned_mixture")),
    # Resuming from a named checkpoint.
    Case("train --resume_from_checkpoint no such folder", "error", "resume_from_checkpoint: no such folder",
         lambda t: run_cli(*train_args(t / "out", "--resume_from_checkpoint", t / "checkpoint-9"))),
    Case("train --resume_from_checkpoint cut short", "error", "is not a complete Trainer checkpoint",
         cut_short_checkpoint),
    Case("train --resume_from_checkpoint of another job", "error",
         "is a checkpoint of a different job (it differs in model.num_experts)",
         lambda t: run_cli(*train_args(t / "out", "--num_experts", 3, "--resume_from_checkpoint",
                                       interrupted_training()))),
    Case("train --resume_from_checkpoint into another folder", "handled", "", resumed_elsewhere, same_as("trained")),
    # Heads-only checkpoints and their backbone.
    Case("heads-only backbone moved", "error", "the backbone folder it names", heads_eval(moved)),
    Case("heads-only backbone folder emptied", "error", "holds no model (no config.json)", heads_eval(emptied)),
    Case("heads-only backbone moved and the config repointed", "handled", "",
         lambda t: (heads_eval(moved_and_repointed)(t), t / "eval.json"), check_heads_results),
    Case("heads-only backbone replaced, same width", "error", "is not the model they were trained on (other weights)",
         heads_eval(replaced_by("llama", seed=1))),
    Case("heads-only backbone replaced, other width", "error", "hidden_size 64 instead of 32",
         heads_eval(replaced_by("llama", hidden_size=64))),
    Case("heads-only backbone replaced by an encoder", "error", "model_type 'bert' instead of 'llama'",
         heads_eval(replaced_by("bert"))),
    Case("heads-only backbone with truncated weights", "error", "the weights of its backbone",
         heads_eval(truncated_weights)),
    Case("steer on a replaced heads-only backbone", "error", "(other weights)", steer_on_replaced_backbone),
    Case("heads-only checkpoint without its head", "error", "model.safetensors", heads_without_weights),
    # Checkpoints missing a file.
    Case("checkpoint without config.json", "error", "(no config.json)", without("config.json")),
    Case("checkpoint without model.safetensors", "error", "no file named model.safetensors",
         without("model.safetensors")),
    Case("checkpoint without tokenizer.json", "error", "lacks tokenizer.json", without("tokenizer.json")),
    Case("checkpoint without tokenizer_config.json", "error", "lacks tokenizer_config.json",
         without("tokenizer_config.json")),
    Case("checkpoint without chat_template.jinja", "error", "is chat_template.jinja missing",
         without("chat_template.jinja")),
    Case("checkpoint without configuration_smoe.py", "handled", "", evaluated_without("configuration_smoe.py"),
         check_checkpoint_results),
    Case("checkpoint without modeling_smoe.py", "handled", "", evaluated_without("modeling_smoe.py"),
         check_checkpoint_results),
    # The feature store.
    Case("embed on a full disk, writing a shard", "error", "no space left on the device", full_disk_on_a_shard),
    Case("embed on a full disk, writing the pair file", "error", "no space left on the device",
         full_disk_on_the_pair_file),
    Case("eval on a read-only cache holding every feature", "handled", "", read_only_full_cache,
         check_checkpoint_results),
    Case("embed into a read-only cache missing texts", "error", "read-only file system",
         read_only_cache_missing_texts),
    Case("pair file cut short", "warning", "damaged pair file (data.arrow does not match its checksum)",
         damaged_pair_file(cut_short), check_checkpoint_results),
    Case("pair file whose manifest counts other rows", "warning", "damaged pair file (wrong row count)",
         damaged_pair_file(miscounted), check_checkpoint_results),
    Case("pairs folder deleted between runs", "handled", "", pairs_folder_deleted_between_runs,
         check_checkpoint_results),
    Case("pairs folder deleted while a pair file is written", "handled", "", pairs_folder_deleted_mid_write,
         check_checkpoint_results),
]


@parametrize(CASES)
def test_store_and_jobs_failure(case, tmp_path):
    check_case(case, tmp_path)


# Real processes: two writers at once, and SIGINT / SIGTERM while a command works.

AT_THE_GATE = textwrap.dedent("""
    import pathlib, sys, time
    ready, gate = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    from hf_smoe.cli.main import main
    ready.touch()
    deadline = time.monotonic() + 300
    while not gate.exists() and time.monotonic() < deadline:  # both processes start embedding together
        time.sleep(0.01)
    sys.exit(main(sys.argv[3:]))
""")

PAUSED = textwrap.dedent("""
    import pathlib, signal, sys, time
    from transformers import Trainer
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal: a background job inherits SIG_IGN
    from hf_smoe.features import EmbeddingCache
    where, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    owner, name = {"checkpoint": (Trainer, "_save_checkpoint"), "step": (Trainer, "training_step"),
                   "shard": (EmbeddingCache, "_write")}[where]
    original = getattr(owner, name)

    def paused(self, *args, **kwargs):  # the work so far is done and more is left when the signal comes
        result = original(self, *args, **kwargs)
        marker.touch()
        time.sleep(300)
        return result

    setattr(owner, name, paused)
    if where == "shard":  # shards of 16 texts, so the first is written long before the last
        start = EmbeddingCache.__init__
        EmbeddingCache.__init__ = lambda self, *args, **options: start(self, *args, **{"shard_size": 16, **options})
    from hf_smoe.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


def started(script: str, *argv) -> subprocess.Popen:
    """`script` in its own process, with this process's environment and so its thread count: what it computes is
    compared bit for bit with runs made here."""
    return subprocess.Popen([sys.executable, "-c", script, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {path.name} before the process ended or {timeout} s: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)


def signalled(tmp_path, where: str, sent: int, argv) -> subprocess.CompletedProcess:
    """`smoe ARGV` in its own process, sent `sent` once it paused at `where` with work done and work left."""
    marker = tmp_path / "paused"
    process = started(PAUSED, where, marker, *argv)
    wait_for(marker, process)
    process.send_signal(sent)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the process outlived its signal by 120 s")
    if sent == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    else:
        assert process.returncode == -sent, stderr[-2000:]
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def as_text(*args) -> list:
    return [str(a) for a in args]


def sigint_train_then_rerun(tmp_path):
    output = tmp_path / "out"
    signalled(tmp_path, "checkpoint", signal.SIGINT, as_text(*train_args(output)))
    assert not output.exists() and (tmp_path / ".out.partial" / "job.json").is_file()
    result = run_cli(*train_args(output))
    assert "Resuming the interrupted run" in result.stdout
    return result, output


def sigterm_train_over_an_old_output(tmp_path):
    """`--overwrite` over an earlier checkpoint and its evaluation, killed with SIGTERM mid-training: the old output
    is untouched; the same command again resumes and replaces it whole."""
    output = Path(shutil.copytree(checkpoint()["folder"], tmp_path / "out"))
    (output / "eval_results.json").write_text('{"accuracy": 0.1}')
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    signalled(tmp_path, "checkpoint", signal.SIGTERM, as_text(*train_args(output, "--overwrite")))
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    result = run_cli(*train_args(output, "--overwrite"))
    assert "Resuming the interrupted run" in result.stdout and not (output / "eval_results.json").exists()
    return result, output


def sigint_tune_backbone_then_rerun(tmp_path):
    output = tmp_path / "out"
    signalled(tmp_path, "step", signal.SIGINT, as_text(*tune_args(output)))
    assert not output.exists()
    return run_cli(*tune_args(output)), output


def embedding_store(cache):
    """The feature store `smoe embed` fills under `cache` with the world's backbone at max length 64."""
    model = SMoERewardModel.from_backbone(world()["backbone"], num_experts=2)
    return EmbeddingCache(model, word_tokenizer("chatml"), cache_dir=cache, max_length=64, show_progress=False).store


def cached_vectors(cache) -> dict:
    """{text key: (prompt vector, response vector)} of every shard of that store."""
    store = embedding_store(cache)
    keys = np.concatenate([table.column("key").to_numpy(zero_copy_only=False) for table in store._open()[2]])
    stored = store.read(store.rows(keys.astype("S64")))
    return {key: (stored["prompt_embedding"][row], stored["response_embedding"][row]) for row, key in enumerate(keys)}


def assert_same_vectors(got: dict, expected: dict):
    assert got.keys() == expected.keys() and expected
    for key, (prompt, response) in expected.items():
        assert np.array_equal(got[key][0], prompt) and np.array_equal(got[key][1], response), key


def sigterm_embed_then_rerun(tmp_path):
    cache = tmp_path / "cache"
    signalled(tmp_path, "shard", signal.SIGTERM, as_text(*embed_args(cache)))
    assert 0 < len(cached_vectors(cache))
    result = run_cli(*embed_args(cache))
    assert leftovers(cache) == []
    return result, cache


@functools.cache
def embedded_alone() -> Path:
    """The cache one uninterrupted `smoe embed` of the pairs fills."""
    cache = world()["root"] / "embedded"
    return finished(run_cli(*embed_args(cache)), cache)


def check_embedded_like_one_run(outcome):
    """Every text of the pairs stored, with the vectors an uninterrupted run stores."""
    result, cache = outcome
    assert result.code == 0, result.stderr[-2000:]
    assert_same_vectors(cached_vectors(cache), cached_vectors(embedded_alone()))


def two_writers(tmp_path):
    """Two `smoe embed` processes fill one cache with the same texts at the same moment."""
    cache, gate = tmp_path / "cache", tmp_path / "go"
    processes = [started(AT_THE_GATE, tmp_path / f"ready-{i}", gate, *embed_args(cache)) for i in range(2)]
    for i, process in enumerate(processes):
        wait_for(tmp_path / f"ready-{i}", process)
    gate.touch()
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("a writer did not finish in 300 s")
        assert process.returncode == 0, stderr[-2000:]
    return CliResult(0, "", ""), cache


def check_each_text_once(outcome):
    _, cache = outcome
    keys = np.concatenate([np.asarray(table.column("key")) for table in embedding_store(cache)._open()[2]])
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} texts stored twice"
    check_embedded_like_one_run(outcome)


PROCESS_CASES = [
    Case("SIGINT to train after an epoch, then the same command", "handled", "", sigint_train_then_rerun,
         same_as("trained")),
    Case("SIGTERM to train --overwrite over an earlier output, then again", "handled", "",
         sigterm_train_over_an_old_output, same_as("trained")),
    Case("SIGINT to tune-backbone mid-training, then the same command", "handled", "",
         sigint_tune_backbone_then_rerun, same_as("tuned")),
    Case("SIGTERM to embed after a shard, then the same command", "handled", "", sigterm_embed_then_rerun,
         check_embedded_like_one_run),
    Case("two processes embed the same texts into one cache", "handled", "", two_writers, check_each_text_once),
]


@pytest.mark.slow
@parametrize(PROCESS_CASES)
def test_real_process_failure(case, tmp_path):
    check_case(case, tmp_path)
