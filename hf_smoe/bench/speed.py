"""The speed benchmarks: each claim is a ratio against a baseline measured in the same run.

- `embed`: tokens/s of the embedding cache (length-bucketed batches) vs a one-text-at-a-time loop, and vs the FLOP
  bound 2 x backbone parameters x tokens at the matmul rate measured in the run.
- `train`: wall time of training on cached features (embedding included) vs re-running the frozen backbone every
  step (the reference implementation's loop; our Trainer's token path), at equal final accuracy.
- `users`: scoring pairs for 1 vs 100 users from one backbone pass (per-user routers share the expert rewards), vs
  a full model forward per user.
- `judge`: the local judge of `smoe interpret`, one prompt at a time in fp32 vs batched with the shared prompt
  beginning run once, in fp32 and in bf16 where the CPU has it.
- `tune`: reward-tuning the top k layers from the hidden-state cache vs re-running the lower layers every step
  (the same tuning the slow way) and vs tuning every layer (backpropagation through the whole model); and the
  same top k layers tuned with a sparse mixture head under Eq. 7 (`--tune_layers`), from the cache and re-running
  the lower layers, vs training the head alone on a frozen backbone's cached features.
"""

import copy
import tempfile
import time

import torch
from datasets import load_from_disk
from transformers import AutoConfig

from ..errors import InputError
from ..evaluation import behaviour_metrics, head_outputs
from ..data import load_pairs
from ..features import EmbeddingCache, as_training_features, encode_batch, encode_pair, shard_damage
from ..interpret import LocalGenerator, judge_prompt, local_generator_source, offline_generators, prompt_text
from ..losses import loss_weights
from ..personalization import score_users
from ..runtime import fast_dtype, is_default_backbone, load_backbone_model, pick_device, resolve_backbone
from ..runtime.devices import dtype_name
from ..training import (BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments,
                        MixtureStatesCollator, PairCollator, SMoETrainer, SMoETrainingArguments, cached_state_sets,
                        prepare_top_layers, run_trainer, split_for_training, tokenize_pairs, tune_backbone)
from .measuring import UNTIMED_WORK_OFF, PeakMemory, benchmark_pairs, in_fresh_process, matmul_flops_per_second


@torch.inference_mode()
def bench_embed(backbone: str, num_texts: int = 64, seed: int = 0) -> dict:
    """Embedding-cache throughput with fp32 and with bf16 backbone weights in the same run (same texts, same
    batches), against a one-text-at-a-time fp32 loop, and as a fraction of the bf16 FLOP bound: the matmul rate
    of the device over 2 FLOPs per non-embedding parameter per token."""
    model, tokenizer = load_backbone_model(backbone, "sparse", 2, seed)
    pairs = benchmark_pairs(num_texts, seed)
    items = list(zip(pairs["prompt"], pairs["chosen"]))
    tokens = sum(len(encode_pair(tokenizer, p, r)["input_ids"]) for p, r in items)
    warm_up = tokenizer.pad([encode_pair(tokenizer, *items[0])], return_tensors="pt").to(model.device)
    model.embed(**warm_up)

    rates, integrity = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        with tempfile.TemporaryDirectory() as folder:
            cache = EmbeddingCache(model, tokenizer, cache_dir=folder, show_progress=False, dtype=dtype)
            start = time.perf_counter()
            cache._computing_model()  # the one-off conversion of the weights, reported apart
            converted = time.perf_counter() - start
            cache._computing_model().embed(**warm_up)  # each dtype's kernels are set up before the clock starts
            start = time.perf_counter()
            cache.embed(items)
            seconds = time.perf_counter() - start
            rates[dtype_name(dtype)] = (tokens / seconds, converted)
            if dtype == fast_dtype(model.device):
                integrity = bench_cache_integrity(cache) | {"embedding_s": seconds}

    start = time.perf_counter()
    for prompt, response in items:
        model.embed(**tokenizer.pad([encode_pair(tokenizer, prompt, response)], return_tensors="pt").to(model.device))
    loop = tokens / (time.perf_counter() - start)

    embedding = model.backbone.get_input_embeddings().weight.numel()
    parameters = sum(p.numel() for p in model.backbone.parameters()) - embedding
    rate = matmul_flops_per_second(model.device, torch.bfloat16)
    bound = rate / (2 * parameters)
    (fp32, _), (bf16, conversion) = rates["float32"], rates["bfloat16"]
    return {"texts": len(items), "tokens": tokens, "non_embedding_parameters": parameters,
            "default_dtype": str(fast_dtype(model.device)), "fp32_cache_tokens_per_s": fp32,
            "bf16_cache_tokens_per_s": bf16, "bf16_vs_fp32": bf16 / fp32, "bf16_conversion_s": conversion,
            "fp32_loop_tokens_per_s": loop, "fp32_cache_vs_loop": fp32 / loop,
            "bf16_matmul_flops_per_s": rate, "bf16_flop_bound_tokens_per_s": bound,
            "bf16_fraction_of_flop_bound": bf16 / bound, **integrity,
            "fingerprint_vs_embedding": integrity["fingerprint_s"] / integrity["embedding_s"]}


def bench_cache_integrity(cache) -> dict:
    """What the cache's integrity costs: the fingerprint (a sha256 of every backbone weight byte), and verifying
    the shards' checksums against reading them with `load_from_disk`."""
    start = time.perf_counter()
    cache.fingerprint()
    fingerprint = time.perf_counter() - start
    shards = sorted(path for path in cache.directory.iterdir() if path.is_dir())
    start = time.perf_counter()
    intact = all([shard_damage(shard) is None for shard in shards])
    verify = time.perf_counter() - start
    start = time.perf_counter()
    for shard in shards:
        load_from_disk(str(shard))
    load = time.perf_counter() - start
    return {"fingerprint_s": fingerprint, "shards": len(shards), "shards_intact": intact, "shard_verify_s": verify,
            "shard_load_s": load, "verify_vs_load": verify / load}


def bench_train(backbone: str, num_pairs: int = 192, epochs: float = 3.0, seed: int = 0) -> dict:
    """Training on cached features (embedding included) vs re-running the frozen backbone every step, on the same
    75% of the pairs; both heads are then measured on the other 25%."""
    if num_pairs < 8:
        raise InputError(f"num_pairs: the train benchmark holds out 25% of the pairs and trains on the rest; give at "
                         f"least 8, got {num_pairs}.")
    pairs = benchmark_pairs(num_pairs, seed)
    split = int(0.75 * len(pairs))
    train_pairs, held_out = pairs.select(range(split)), pairs.select(range(split, len(pairs)))
    results = {"train_pairs": len(train_pairs), "held_out_pairs": len(held_out), "epochs": epochs}
    with tempfile.TemporaryDirectory() as folder:
        args = SMoETrainingArguments(output_dir=folder, num_train_epochs=epochs, seed=seed, **UNTIMED_WORK_OFF)
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


def bench_users(backbone: str, num_pairs: int = 32, num_users: int = 100, naive_users: int = 3,
                seed: int = 0) -> dict:
    """Scoring the same pairs for many users: one backbone pass whose expert rewards every user's router shares
    (`score_users`), for 1 and for `num_users` users, vs the naive way, a full model forward per user (measured for
    `naive_users` users; it grows linearly)."""
    model, tokenizer = load_backbone_model(backbone, "sparse", 5, seed)
    pairs = benchmark_pairs(num_pairs, seed)
    batch = encode_batch(tokenizer, pairs["prompt"], pairs["chosen"], model.device)
    routers = [copy.deepcopy(model.head.router).eval() for _ in range(num_users)]
    model.embed(**batch)  # warm-up

    def shared(users: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            prompts, responses = model.embed(**batch)
            score_users(model.head, routers[:users], prompts.float(), responses.float())
        return time.perf_counter() - start

    one, many = shared(1), shared(num_users)
    start = time.perf_counter()
    with torch.inference_mode():
        for router in routers[:naive_users]:
            model.head.router = router
            model(**batch)
    naive_per_user = (time.perf_counter() - start) / naive_users
    return {"pairs": num_pairs, "users": num_users, "shared_pass_1_user_s": one,
            f"shared_pass_{num_users}_users_s": many, f"cost_ratio_{num_users}_vs_1": many / one,
            "naive_per_user_s": naive_per_user,
            f"naive_{num_users}_users_s_linear": naive_per_user * num_users,
            f"speedup_{num_users}_users_vs_naive": naive_per_user * num_users / many}


def bench_judge(backbone: str, num_prompts: int = 64, batch_size: int = 8, seed: int = 0) -> dict:
    """The local judge of `smoe interpret` (Fig. 5 prompts on the demo set's prompts, one description), per judge:
    prompts/s of one prompt at a time in fp32 (the plain loop) vs batched passes that run the shared beginning once,
    in fp32 and in `fast_dtype` (bf16 on CPUs with native bf16); with the bf16 judge's agreement with fp32.
    `backbone` is the judge as `--generator` names it (a causal LM's folder or Hub id, a GGUF file or split model);
    the default (the embedded backbone) measures every offline judge installed, SmolLM2 and, with the describer
    extra, the 1.5B model, in one run."""
    judges = offline_generators() if is_default_backbone(backbone) else [backbone]
    return {judge: judge_speed(judge, num_prompts, batch_size, seed) for judge in judges}


def judge_speed(judge: str, num_prompts: int, batch_size: int, seed: int) -> dict:
    """`bench_judge`'s figures for one judge spec."""
    model = local_generator_source(judge)
    texts = list(dict.fromkeys(prompt_text(p) for p in benchmark_pairs(4 * num_prompts, seed)["prompt"]))
    prompts = [judge_prompt("asks for cooking advice", text) for text in texts[:num_prompts]]
    runs, device = {}, pick_device()
    for name, dtype, size in (("fp32_one_at_a_time", torch.float32, 1), ("fp32_batched", torch.float32, batch_size),
                              ("fast_batched", fast_dtype(device), batch_size)):
        generator = LocalGenerator(model, dtype=dtype, batch_size=size)
        generator.judge(prompts[:size])  # warm-up
        start = time.perf_counter()
        runs[name] = generator.judge(prompts)
        runs[name + "_prompts_per_s"] = len(prompts) / (time.perf_counter() - start)
    reference, fast = runs["fp32_one_at_a_time"], runs["fast_batched"]
    return {"prompts": len(prompts), "batch_size": batch_size, "fast_dtype": str(fast_dtype(device)),
            **{key: value for key, value in runs.items() if key.endswith("_per_s")},
            "speedup_fp32_batched": runs["fp32_batched_prompts_per_s"] / runs["fp32_one_at_a_time_prompts_per_s"],
            "speedup_fast_batched": runs["fast_batched_prompts_per_s"] / runs["fp32_one_at_a_time_prompts_per_s"],
            "fast_vs_fp32_same_answer": sum(a.answer == b.answer for a, b in zip(reference, fast)) / len(prompts),
            "fast_vs_fp32_max_probability_gap": max(abs(a.probability - b.probability)
                                                    for a, b in zip(reference, fast)),
            "batched_vs_one_at_a_time_max_probability_gap": max(
                abs(a.probability - b.probability) for a, b in zip(reference, runs["fp32_batched"]))}


def mixture_tune_speed(backbone: str, splits: dict, layers: int, epochs: float, seed: int, folder: str) -> dict:
    """Seconds per epoch and peak memory of a sparse head (K = 5) trained four ways on `splits`, each in a fresh
    process (so its peak memory is its own): with the top `layers` layers under Eq. 7 from the hidden-state cache
    (`--tune_layers`; each pair's shared prefix run once), the same with each text run whole (its prompt once per
    response), the same re-running the lower layers every step, and alone on the frozen backbone's cached features
    (each cache's one-off filling timed apart)."""
    results = {}
    for way in ("cached", "unshared", "recomputed", "frozen_head"):
        run = in_fresh_process(mixture_training_run, way, backbone, splits, layers, epochs, seed, folder)
        results.update({f"mixture_{way}_{name}": value for name, value in run.items()})
    cached = results["mixture_cached_seconds_per_epoch"]
    results["mixture_speedup_vs_unshared"] = results["mixture_unshared_seconds_per_epoch"] / cached
    results["mixture_speedup_vs_recomputed"] = results["mixture_recomputed_seconds_per_epoch"] / cached
    results["mixture_cost_vs_frozen_head"] = cached / results["mixture_frozen_head_seconds_per_epoch"]
    return results


def mixture_training_run(way: str, backbone: str, splits: dict, layers: int, epochs: float, seed: int,
                         folder: str) -> dict:
    """One of `mixture_tune_speed`'s four ways: its cache filling, seconds per epoch, peak anonymous memory and,
    for the top layers, the tokens they run per epoch."""
    model, tokenizer = load_backbone_model(backbone, "sparse", 5, seed)
    args = SMoETrainingArguments(output_dir=f"{folder}/{way}", num_train_epochs=epochs, seed=seed, **UNTIMED_WORK_OFF)
    start = time.perf_counter()
    if way == "frozen_head":
        cache = EmbeddingCache(model, tokenizer, cache_dir=f"{folder}/cache", show_progress=False)
        sets, options, trained = {n: cache.pair_features(splits[n]) for n in ("train", "validation")}, {}, model
        tokens = {}
    else:
        trained, _ = prepare_top_layers(model, layers)
        sets, states = cached_state_sets(trained, tokenizer, splits, cache_dir=f"{folder}/cache", show_progress=False)
        options = {"data_collator": MixtureStatesCollator(states, recompute=way == "recomputed",
                                                          share_prefix=way != "unshared")}
        train = sets["train"]
        tokens = {"top_layer_tokens": sum(train["length"]) if way != "unshared"
                  else sum(train["chosen_length"]) + sum(train["rejected_length"])}
    filled = time.perf_counter() - start
    with PeakMemory() as memory:
        start = time.perf_counter()
        run_trainer(trained, sets, args, **options)
        seconds = time.perf_counter() - start
    return {"cache_fill_s": filled, "seconds_per_epoch": seconds / epochs,
            "peak_anonymous_mb": memory.anonymous / 2**20, **tokens}


def bench_tune(backbone: str, num_pairs: int = 192, layers: int = 2, epochs: float = 1.0, seed: int = 0) -> dict:
    """`tune_backbone` three ways on the demo's pairs (80/10/10 split), same seed and batches: the top `layers`
    layers from the hidden-state cache (its one-off filling timed apart), the same layers with the lower ones
    re-run every step, and every layer tuned. Seconds per epoch (no evaluation inside) and validation accuracy."""
    total = AutoConfig.from_pretrained(resolve_backbone(backbone)).num_hidden_layers
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        benchmark_pairs(num_pairs, seed).to_json(f"{folder}/pairs.jsonl")
        data = DataArguments(dataset=f"{folder}/pairs.jsonl", cache_dir=f"{folder}/cache")
        for name, k, recompute in (("cached", layers, False), ("recomputed", layers, True),
                                   ("all_layers", total, True)):
            training = BackboneTuningTrainingArguments(output_dir=f"{folder}/{name}", num_train_epochs=epochs,
                                                       seed=seed, **UNTIMED_WORK_OFF)
            runs[name] = tune_backbone(data, BackboneTuningArguments(backbone=backbone, layers=k), training,
                                       recompute_states=recompute)
        splits = split_for_training(load_pairs(data.dataset), data.split_seed)  # as tune_backbone splits them
        mixture = mixture_tune_speed(backbone, splits, layers, epochs, seed, f"{folder}/mixture")
    cached = runs["cached"]["seconds_per_epoch"]
    return {**mixture, "layers": layers, "of_layers": total, "train_pairs": runs["cached"]["train_pairs"],
            "validation_pairs": runs["cached"]["validation_pairs"], "epochs": epochs,
            "hidden_state_cache_fill_s": runs["cached"]["hidden_state_seconds"],
            **{f"{name}_seconds_per_epoch": run["seconds_per_epoch"] for name, run in runs.items()},
            **{f"{name}_validation_accuracy": run["validation_accuracy"] for name, run in runs.items()},
            "speedup_vs_recomputed": runs["recomputed"]["seconds_per_epoch"] / cached,
            "speedup_vs_all_layers": runs["all_layers"]["seconds_per_epoch"] / cached}
