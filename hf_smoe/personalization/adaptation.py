"""Personalization (§6.2): adapt the router to a new user or attribute from a few labeled pairs.

The experts and the backbone stay frozen: only the routing changes. `hedge_adapt` fine-tunes a copy of the router
with the Hedge algorithm of MiCRo (Alg. 1); `hyre_weights` is the HyRe baseline's input-independent reweighting.
Both read cached features (prompt embedding + per-expert rewards), so adapting to 50 pairs takes well under a second.
`adapt_checkpoint` is `smoe adapt`: n pairs (seeded) adapt a checkpoint's router, every other pair of the file
measures accuracy before and after, and the result is a router file (`routers`), a bar chart of the per-expert weight
shift and the numbers, printed and in the router's metadata.
"""

import copy
import math
import random

import torch

from ..data import load_pairs
from ..errors import InputError
from ..evaluation import plot_weight_shift
from ..features import FEATURE_COLUMNS, EmbeddingCache, as_training_features
from ..losses import expert_losses
from ..metrics import pairwise_accuracy
from ..modeling.modeling_smoe import mixture_reward
from ..runtime import check_output_file, load_checkpoint
from .routers import is_router_file, save_router, static_router

METHODS = ("hedge", "hyre")  # what `adapt_router` fits: a fine-tuned router, or static HyRe weights


def hedge_targets(routing_weights: torch.Tensor, losses: torch.Tensor, tau: float) -> torch.Tensor:
    """Hedge's soft labels (MiCRo Eq. 6): ω_ik ∝ π_k(x_i) exp(-L_ik / τ), normalised over k.

    Computed as softmax(log π - L / τ) in log space, so τ = 1e-3 with losses 50 nats apart gives an exact one-hot
    instead of 0/0. An expert with π_k = 0 (a softmax that underflowed) keeps ω_k = 0, as in the product form; each
    row of π sums to 1, so some expert always has π_k > 0."""
    if not 0 < tau < math.inf:
        raise InputError(f"tau: Hedge's temperature must be a finite number > 0, got {tau}.")
    return torch.softmax(torch.log(routing_weights) - losses / tau, dim=-1)


def hyre_weights(chosen_expert_rewards: torch.Tensor, rejected_expert_rewards: torch.Tensor) -> torch.Tensor:
    """HyRe's input-independent ensemble weights (Lee et al. 2024): w_k ∝ exp(-Σ_i L_ik) over the adaptation set,
    the posterior over heads under a uniform prior with each head's Bradley-Terry likelihood."""
    return torch.softmax(-expert_losses(chosen_expert_rewards, rejected_expert_rewards).sum(dim=0), dim=-1)


@torch.no_grad()
def expert_rewards_of(head, features) -> tuple:
    """(prompt embeddings, chosen expert rewards, rejected expert rewards) of cached pair features."""
    device = next(head.parameters()).device
    columns = as_training_features(features)[:]
    prompts, chosen, rejected = (columns[name].to(device) for name in FEATURE_COLUMNS)
    return prompts, head.experts(chosen), head.experts(rejected)


def hedge_adapt(head, features, *, epochs: int = 10, batch_size: int = 32, learning_rate: float = 0.01,
                tau: float = 1e-3, seed: int = 0) -> torch.nn.Module:
    """A copy of `head.router` fitted to `features` (cached pair features of the user's labeled pairs) with Hedge
    (MiCRo Alg. 1): at the start of every epoch the targets ω are recomputed from the current router and the frozen
    experts; each step minimises the cross-entropy between ω and the router's output (AdamW without weight decay,
    lr 0.01, batch 32, 10 epochs: the paper's App. B; the router keeps its training-time jitter and dropout). The
    original router and the experts are not touched."""
    for name, value in (("tau", tau), ("learning_rate", learning_rate)):
        if not 0 < value < math.inf:
            raise InputError(f"{name}: must be a finite number > 0, got {value}.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: must be an integer >= 1, got {value!r}.")
    if len(features) == 0:
        raise InputError("features: no labeled pairs to adapt on.")
    prompts, chosen, rejected = expert_rewards_of(head, features)
    losses = expert_losses(chosen, rejected)
    router = copy.deepcopy(head.router)
    optimizer = torch.optim.AdamW(router.parameters(), lr=learning_rate, weight_decay=0.0)  # fit ω, nothing else
    generator = torch.Generator().manual_seed(seed)
    # the router's jitter and dropout draw from the global generator: seed them too, without disturbing the caller's
    with torch.random.fork_rng(devices=[prompts.device] if prompts.device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)
        _fit_hedge(router, optimizer, prompts, losses, epochs, batch_size, tau, generator)
    return router.eval()


def _fit_hedge(router, optimizer, prompts, losses, epochs, batch_size, tau, generator) -> None:
    for _ in range(epochs):
        router.eval()
        with torch.no_grad():
            targets = hedge_targets(router(prompts), losses, tau)
        router.train()
        for batch in torch.randperm(len(prompts), generator=generator).split(batch_size):
            log_routing = torch.log(router(prompts[batch]).clamp_min(torch.finfo(prompts.dtype).tiny))
            loss = -(targets[batch] * log_routing).sum(dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def routed_accuracy(router, prompts, chosen_expert_rewards, rejected_expert_rewards) -> tuple:
    """(pairwise accuracy of the mixture reward under `router`, its (K,) mean routing weight) on cached pairs."""
    was_training = router.training
    routing = router.eval()(prompts)
    router.train(was_training)
    accuracy = pairwise_accuracy(mixture_reward(routing, chosen_expert_rewards),
                                 mixture_reward(routing, rejected_expert_rewards))
    return accuracy.item(), routing.mean(dim=0)


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
                     max_eval_pairs: int | None = None, cache_dir=None, max_length: int | None = None,
                     overwrite: bool = False) -> dict:
    """Adapts `checkpoint`'s router on n pairs of `data` (`adapt_to_pairs`), writes the router file to `output` and
    the shift chart beside it (`<output stem>.png`); returns before/after accuracy on the remaining pairs and the
    weight shift. An existing `output` is replaced only with `overwrite` and only if it is a router file."""
    check_method(method)  # before any model loads
    output = check_output_file(output, ".safetensors", overwrite=overwrite, ours=is_router_file)
    chart = check_output_file(output.with_suffix(".png"), ".png", overwrite=overwrite, flag="--output's chart")
    model, tokenizer = load_checkpoint(checkpoint)
    cache = EmbeddingCache.of_checkpoint(model, tokenizer, max_length, cache_dir=cache_dir)
    router, results = adapt_to_pairs(model, cache, load_pairs(data, format, seed=seed), n, method, seed,
                                     max_eval_pairs)
    results |= {"data": str(data), "checkpoint": str(checkpoint)}
    results["router"] = str(save_router(router, output, model, **results))
    results["chart"] = str(plot_weight_shift(
        chart, results["weight_shift"], f"{method} on {n} pairs: accuracy {100 * results['accuracy_before']:.1f}% "
                                        f"-> {100 * results['accuracy_after']:.1f}%"))
    return results


def adapt_to_pairs(model, cache, pairs, n: int, method: str = "hedge", seed: int = 0,
                   max_eval_pairs: int | None = None) -> tuple:
    """(router, results): `method` adapts `model`'s router on n seeded pairs of `pairs` (features from `cache`); the
    other pairs (at most `max_eval_pairs`) measure accuracy before and after and the mean routing shift. What
    `smoe adapt` and the reward server's user endpoint both run, so one router comes out of the same pairs and seed."""
    check_method(method)
    adapt_pairs, eval_pairs = adaptation_split(pairs, n, seed)
    if max_eval_pairs is not None and max_eval_pairs < len(eval_pairs):
        eval_pairs = eval_pairs.shuffle(seed=seed).select(range(max_eval_pairs))
    router = adapt_router(model, cache.pair_features(adapt_pairs), method, seed)
    held_out = expert_rewards_of(model.head, cache.pair_features(eval_pairs))
    accuracy_before, routing_before = routed_accuracy(model.head.router, *held_out)
    accuracy_after, routing_after = routed_accuracy(router, *held_out)
    return router, {"method": method, "n": n, "eval_pairs": len(eval_pairs), "accuracy_before": accuracy_before,
                    "accuracy_after": accuracy_after, "weight_shift": (routing_after - routing_before).tolist(),
                    "seed": seed}
