"""`smoe bench`: speed claims as ratios against a baseline measured in the same run, on this machine.

- `embed`: tokens/s of the embedding cache (length-bucketed batches) vs a one-text-at-a-time loop, and vs the FLOP
  bound 2 x backbone parameters x tokens at the matmul rate measured here.
- `train`: wall time of training on cached features (embedding included) vs re-running the frozen backbone every
  step (the reference implementation's loop; our Trainer's token path), at equal final accuracy.
"""

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from .encoding import encode_pair
from .features import EmbeddingCache, compute_dtype
from .pipeline import load_backbone_model, pick_device
from .synthetic import generate_preference_set
from .training import (PairCollator, SMoETrainer, SMoETrainingArguments, as_training_features, behaviour_metrics,
                       head_outputs, loss_weights, tokenize_pairs)


def machine() -> str:
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    return f"{device.type} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * 2 * size ** 3 / (time.perf_counter() - start)


def benchmark_pairs(num_pairs: int, seed: int):
    """The demo's generated set: always available offline, with realistic chat-template lengths."""
    pairs = generate_preference_set(seed=seed)
    return pairs.shuffle(seed=seed).select(range(min(num_pairs, len(pairs))))


@torch.inference_mode()
def bench_embed(backbone: str, num_texts: int = 64, seed: int = 0) -> dict:
    model, tokenizer = load_backbone_model(backbone, "sparse", 2, seed)
    pairs = benchmark_pairs(num_texts, seed)
    items = list(zip(pairs["prompt"], pairs["chosen"]))
    tokens = sum(len(encode_pair(tokenizer, p, r)["input_ids"]) for p, r in items)
    model.embed(**tokenizer.pad([encode_pair(tokenizer, *items[0])], return_tensors="pt").to(model.device))

    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(model, tokenizer, cache_dir=folder, show_progress=False)
        start = time.perf_counter()
        cache.embed(items)
        cached_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for prompt, response in items:
        model.embed(**tokenizer.pad([encode_pair(tokenizer, prompt, response)], return_tensors="pt").to(model.device))
    loop_seconds = time.perf_counter() - start

    parameters = sum(p.numel() for p in model.backbone.parameters())
    rate = matmul_flops_per_second(model.device, compute_dtype(model.device))
    bound = rate / (2 * parameters)
    cached, loop = tokens / cached_seconds, tokens / loop_seconds
    return {"texts": len(items), "tokens": tokens, "backbone_parameters": parameters,
            "cache_tokens_per_s": cached, "loop_tokens_per_s": loop, "speedup_vs_loop": cached / loop,
            "matmul_flops_per_s": rate, "flop_bound_tokens_per_s": bound, "fraction_of_flop_bound": cached / bound}


def bench_train(backbone: str, num_pairs: int = 192, epochs: float = 3.0, seed: int = 0) -> dict:
    pairs = benchmark_pairs(num_pairs, seed)
    split = int(0.75 * len(pairs))
    train_pairs, held_out = pairs.select(range(split)), pairs.select(range(split, len(pairs)))
    results = {"train_pairs": len(train_pairs), "held_out_pairs": len(held_out), "epochs": epochs}
    with tempfile.TemporaryDirectory() as folder:
        args = SMoETrainingArguments(output_dir=folder, num_train_epochs=epochs, seed=seed, eval_strategy="no",
                                     disable_tqdm=True, logging_strategy="no")
        model, tokenizer = load_backbone_model(backbone, "sparse", 4, seed)
        cache = EmbeddingCache(model, tokenizer, cache_dir=folder, show_progress=False)
        start = time.perf_counter()
        train_features = cache.pair_features(train_pairs)
        SMoETrainer(model, args, train_dataset=train_features).train()
        results["cached_seconds"] = time.perf_counter() - start

        reference, _ = load_backbone_model(backbone, "sparse", 4, seed)
        tokens = tokenize_pairs(train_pairs, tokenizer)
        start = time.perf_counter()
        SMoETrainer(reference, args, train_dataset=tokens, data_collator=PairCollator(tokenizer)).train()
        results["rerun_backbone_seconds"] = time.perf_counter() - start

        evaluation = as_training_features(cache.pair_features(held_out))
        for name, trained in (("cached", model), ("rerun_backbone", reference)):
            metrics = behaviour_metrics(head_outputs(trained.head, evaluation), loss_weights(trained.config))
            results[f"{name}_accuracy"] = metrics["accuracy"]
        results["max_head_weight_difference"] = max(
            (a - b).abs().max().item() for a, b in zip(model.head.parameters(), reference.head.parameters()))
    results["speedup"] = results["rerun_backbone_seconds"] / results["cached_seconds"]
    return results


def run_bench(what: str, backbone: str, output_dir: str, **options) -> dict:
    results = {"embed": bench_embed, "train": bench_train}[what](backbone, **options)
    record = {"command": " ".join(sys.argv), "benchmark": what, "options": options, "backbone": backbone,
              "machine": machine(), "results": results}
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"bench_{what}.json").write_text(json.dumps(record, indent=2))
    return record
