"""The scale benchmark: the feature store at the paper's scale (up to 700K pairs, H = 3072). Synthetic features are
written in the cache format, then one training epoch and an evaluation read from them, each in a fresh process whose
peak memory is measured; against holding every vector in RAM as float32 (how the store once worked) where that
fits."""

import concurrent.futures
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import LlamaConfig

from ..evaluation import behaviour_metrics, head_outputs
from ..features import FeatureStore, as_training_features, text_key
from ..losses import loss_weights
from ..modeling.configuration_smoe import SMoERewardConfig
from ..modeling.modeling_smoe import SMoERewardModel
from ..training import SMoETrainer, SMoETrainingArguments
from .measuring import UNTIMED_WORK_OFF, PeakMemory, in_fresh_process


SCALE_CATEGORIES = 8  # latent categories of the synthetic scale set: each has its own prompt and preference direction


def scale_prompt(row: int) -> str:
    return f"synthetic prompt {row}"


def scale_response(side: str, row: int) -> str:
    """The text of the `side` ("chosen" or "rejected") response of pair `row`."""
    return f"{side} answer {row}"


def scale_pairs(num_pairs: int) -> Dataset:
    """The scale benchmark's pairs: short distinct texts (their keys index the synthetic features) and a category."""
    return Dataset.from_dict({"prompt": [scale_prompt(i) for i in range(num_pairs)],
                              "chosen": [scale_response("chosen", i) for i in range(num_pairs)],
                              "rejected": [scale_response("rejected", i) for i in range(num_pairs)],
                              "category": [f"c{i % SCALE_CATEGORIES}" for i in range(num_pairs)]})


def write_scale_store(folder: str, num_pairs: int, hidden: int, seed: int, shard_size: int = 8192) -> dict:
    """Float16 features of the scale pairs in the cache's format (`FeatureStore.write_shard`), written shard by shard
    with a learnable structure: a prompt points along its category's direction, and the chosen response sits on the
    positive side of the category's preference direction, the rejected one on the negative side."""
    generator = np.random.default_rng(seed)
    topics, preferences = (generator.standard_normal((SCALE_CATEGORIES, hidden), dtype=np.float32) for _ in range(2))
    store = FeatureStore(folder, hidden, np.float16)
    start = time.perf_counter()
    for first in range(0, num_pairs, shard_size // 2):
        rows = np.arange(first, min(first + shard_size // 2, num_pairs))
        category = rows % SCALE_CATEGORIES
        prompts = topics[category] + generator.standard_normal((len(rows), hidden), dtype=np.float32)
        noise = generator.standard_normal((2, len(rows), hidden), dtype=np.float32)
        keys = [text_key(scale_prompt(i), scale_response(side, i)) for side in ("chosen", "rejected") for i in rows]
        store.write_shard(np.array(keys, dtype="S64"), prompt_embedding=np.concatenate([prompts, prompts]),
                          response_embedding=np.concatenate([noise[0] + 0.1 * preferences[category],
                                                             noise[1] - 0.1 * preferences[category]]))
    seconds = time.perf_counter() - start
    return {"write_s": seconds, "texts_per_s": 2 * num_pairs / seconds,
            "disk_gb": sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 1e9}


def scale_run(folder: str, num_pairs: int, hidden: int, seed: int, mode: str) -> dict:
    """One training epoch and a test evaluation on the stored features, in this (fresh) process: `streamed` reads
    memory-mapped pair files; `in_memory` first holds every stored vector as float32, as the store once did."""
    torch.manual_seed(seed)
    pairs = scale_pairs(num_pairs)
    split = int(0.9 * num_pairs)
    splits = {"train": pairs.select(range(split)), "test": pairs.select(range(split, num_pairs))}
    backbone = LlamaConfig(vocab_size=8, hidden_size=hidden, intermediate_size=8, num_hidden_layers=0,
                           num_attention_heads=8, num_key_value_heads=8)
    model = SMoERewardModel(SMoERewardConfig(backbone_config=backbone, num_experts=20, preset="sparse"))
    store = FeatureStore(folder, hidden, np.float16)
    results = {}
    with PeakMemory() as memory:
        start = time.perf_counter()
        features = {}
        if mode == "in_memory":  # the earlier store: every vector of the cache as float32 in RAM
            stored = store.read(np.arange(len(store)))
            prompts, responses = (stored[name].astype(np.float32) for name in ("prompt_embedding",
                                                                               "response_embedding"))
        for name, part in splits.items():
            chosen = np.array([text_key(p, r) for p, r in zip(part["prompt"], part["chosen"])], dtype="S64")
            rejected = np.array([text_key(p, r) for p, r in zip(part["prompt"], part["rejected"])], dtype="S64")
            if mode == "streamed":
                features[name] = store.pair_features(part, chosen, rejected)
            else:  # and pair features built in memory from them
                chosen_rows, rejected_rows = store.rows(chosen), store.rows(rejected)
                features[name] = Dataset.from_dict({"prompt_embedding": prompts[chosen_rows],
                                                    "chosen_embedding": responses[chosen_rows],
                                                    "rejected_embedding": responses[rejected_rows]})
        results["pair_features_s"] = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as output:
            args = SMoETrainingArguments(output_dir=output, num_train_epochs=1, seed=seed, report_to="none",
                                         **UNTIMED_WORK_OFF)
            start = time.perf_counter()
            SMoETrainer(model, args, train_dataset=features["train"]).train()
            results["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics = behaviour_metrics(head_outputs(model.head, as_training_features(features["test"])),
                                    loss_weights(model.config))
        results["eval_s"] = time.perf_counter() - start
    return results | {"train_pairs_per_s": split / results["train_s"],
                      "eval_pairs_per_s": (num_pairs - split) / results["eval_s"],
                      "test_accuracy": metrics["accuracy"], "peak_rss_gb": memory.total / 1e9,
                      "peak_anonymous_gb": memory.anonymous / 1e9}


def bench_scale(backbone: str, num_pairs=(10_000, 100_000), hidden: int = 3072, in_memory_max_pairs: int = 10_000,
                scratch_dir=None, seed: int = 0) -> dict:
    """`scale_run` for each size in `num_pairs` on synthetic float16 features (`write_scale_store`) in a scratch
    folder deleted afterwards; the in-memory baseline runs on the sizes up to `in_memory_max_pairs`. `backbone` is
    not used: the features are synthetic, of width `hidden`."""
    results = {}
    scratch = None if scratch_dir is None else Path(scratch_dir).expanduser()
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    for size in sorted(num_pairs):
        folder = Path(tempfile.mkdtemp(prefix=f"smoe-scale-{size}-", dir=scratch))
        try:
            run = {"pairs": size} | in_fresh_process(write_scale_store, str(folder), size, hidden, seed)
            run["streamed"] = in_fresh_process(scale_run, str(folder), size, hidden, seed, "streamed")
            run["disk_gb_with_pair_files"] = sum(path.stat().st_size for path in folder.rglob("*")
                                                 if path.is_file()) / 1e9
            if size <= in_memory_max_pairs:
                try:
                    run["in_memory"] = in_fresh_process(scale_run, str(folder), size, hidden, seed, "in_memory")
                    run["streamed_vs_in_memory_train_speed"] = (run["streamed"]["train_pairs_per_s"]
                                                                / run["in_memory"]["train_pairs_per_s"])
                except concurrent.futures.process.BrokenProcessPool:  # the kernel's OOM killer, as a rule
                    run["in_memory"] = "killed before it finished (out of memory, if dmesg shows an oom-kill)"
            results[str(size)] = run
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    smallest = results[str(min(num_pairs))]["streamed"]["train_pairs_per_s"]
    for run in results.values():
        run["train_speed_vs_smallest"] = run["streamed"]["train_pairs_per_s"] / smallest
    return {"hidden": hidden, "storage": "float16", **results}
