"""`smoe adapt`: personalize a checkpoint to one user's (or attribute's) labeled pairs and show what changed.

n pairs (seeded) adapt the router; every other pair of the file measures accuracy before and after. The result is a
router file (`hf_smoe.routers`), a bar chart of the per-expert weight shift and the numbers, printed and in the
router's metadata.
"""

import random

from .adaptation import expert_rewards_of, hedge_adapt, hyre_weights, routed_accuracy
from .data import load_pairs
from .loading import load_checkpoint
from .features import EmbeddingCache
from .plots import plot_weight_shift
from .outputs import check_output_file
from .routers import is_router_file, save_router, static_router
from .modeling.configuration_smoe import InputError

METHODS = ("hedge", "hyre")


def adaptation_split(pairs, n: int, seed: int = 0) -> tuple:
    """(n random pairs to adapt on, the other pairs to evaluate on), seeded."""
    if not 0 < n < len(pairs):
        raise InputError(f"n: need 0 < n < {len(pairs)} (the pairs in the data) so that some pairs remain to "
                         f"measure the adaptation; got n={n}.")
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), n))
    rest = sorted(set(range(len(pairs))) - set(chosen))
    return pairs.select(chosen), pairs.select(rest)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"method: unknown adaptation method {method!r}; choose one of {METHODS}.")


def adapt_router(model, features, method: str, seed: int = 0):
    """The router `method` fits to `features` for `model`'s frozen experts: Hedge fine-tunes a copy of the router;
    HyRe returns a static router with its input-independent weights."""
    check_method(method)
    if method == "hedge":
        return hedge_adapt(model.head, features, seed=seed)
    _, chosen, rejected = expert_rewards_of(model.head, features)
    return static_router(model.config, hyre_weights(chosen, rejected)).to(chosen.device)


def adapt_checkpoint(checkpoint, data, *, output, n: int = 50, method: str = "hedge", format=None, seed: int = 0,
                     max_eval_pairs: int | None = None, cache_dir=None, max_length: int = 1024,
                     overwrite: bool = False) -> dict:
    """Adapts `checkpoint`'s router on n pairs of `data`, writes the router file to `output` and the shift chart
    beside it (`<output stem>.png`); returns before/after accuracy on the remaining pairs and the weight shift. An
    existing `output` is replaced only with `overwrite` and only if it is a router file."""
    check_method(method)  # before any model loads
    output = check_output_file(output, ".safetensors", overwrite=overwrite, ours=is_router_file)
    chart = check_output_file(output.with_suffix(".png"), ".png", overwrite=overwrite, flag="--output's chart")
    model, tokenizer = load_checkpoint(checkpoint)
    adapt_pairs, eval_pairs = adaptation_split(load_pairs(data, format, seed=seed), n, seed)
    if max_eval_pairs is not None and max_eval_pairs < len(eval_pairs):
        eval_pairs = eval_pairs.shuffle(seed=seed).select(range(max_eval_pairs))
    cache = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=max_length)
    router = adapt_router(model, cache.pair_features(adapt_pairs), method, seed)
    held_out = expert_rewards_of(model.head, cache.pair_features(eval_pairs))
    accuracy_before, routing_before = routed_accuracy(model.head.router, *held_out)
    accuracy_after, routing_after = routed_accuracy(router, *held_out)
    shift = (routing_after - routing_before).tolist()
    results = {"method": method, "n": n, "eval_pairs": len(eval_pairs), "accuracy_before": accuracy_before,
               "accuracy_after": accuracy_after, "weight_shift": shift, "seed": seed, "data": str(data),
               "checkpoint": str(checkpoint)}
    results["router"] = str(save_router(router, output, model, **results))
    results["chart"] = str(plot_weight_shift(
        chart, shift,
        f"{method} on {n} pairs: accuracy {100 * accuracy_before:.1f}% -> {100 * accuracy_after:.1f}%"))
    return results
