"""The training objective (the paper's Eq. 3-7) and MiCRo's uniform prior, one function per term.

Every function takes per-pair routing weights `pi` of shape (B, K) and per-expert rewards of shape (B, K) and
returns a scalar. Terms are computed in float32 whatever the input dtype, and stay finite for rewards of +-1e4,
for routing weights that underflow to 0, for a single pair and for K = 1 (see each docstring).
"""

import math

import torch
import torch.nn.functional as F

from .modeling.configuration_smoe import LAMBDA_NAMES, PRESETS, check_loss_weights
from .errors import InputError


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p log p with 0 log 0 = 0 and a finite gradient at p = 0."""
    return p * p.clamp_min(torch.finfo(p.dtype).tiny).log()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -_xlogx(p).sum(dim=-1)


def expert_losses(chosen_rewards, rejected_rewards) -> torch.Tensor:
    """(B, K) L_k = -log sigma(r_k(x, y_w) - r_k(x, y_l)): each expert's Bradley-Terry loss on each pair (also
    Hedge's and HyRe's per-expert loss)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def mixture_nll(routing_weights, chosen_rewards, rejected_rewards) -> torch.Tensor:
    """Eq. 3: -mean log sum_k pi_k(x) sigma(r_k(x, y_w) - r_k(x, y_l)), as logsumexp(log pi - L_k).
    With K = 1 this is the Bradley-Terry loss."""
    log_pi = routing_weights.clamp_min(torch.finfo(routing_weights.dtype).tiny).log()
    return -torch.logsumexp(log_pi - expert_losses(chosen_rewards, rejected_rewards), dim=-1).mean()


def local_sparsity(routing_weights) -> torch.Tensor:
    """Eq. 4: mean_x H(pi(x)) / log K. Zero for K = 1 (a one-expert router is always sparse)."""
    num_experts = routing_weights.shape[-1]
    if num_experts == 1:
        return routing_weights.new_zeros(())
    return _entropy(routing_weights).mean() / math.log(num_experts)


def global_balance(routing_weights) -> torch.Tensor:
    """Eq. 5: -H(mean_{x in batch} pi(x)) / log K, in [-1, 0]; -1 when the batch uses experts evenly. Zero for K = 1."""
    num_experts = routing_weights.shape[-1]
    if num_experts == 1:
        return routing_weights.new_zeros(())
    return -_entropy(routing_weights.mean(dim=0)) / math.log(num_experts)


def expert_diversity(chosen_rewards, rejected_rewards) -> torch.Tensor:
    """Eq. 6: 2 / (K (K - 1)) sum_{i<j} corr(Delta_i, Delta_j)^2, Pearson over the batch.

    A constant Delta column has no defined correlation and counts as uncorrelated (0): this makes the term 0 for a
    batch of one pair and for K = 1. "Constant" means a spread at the rounding level of the rewards the column was
    computed from (std <= 64 float-eps x max |r|), since r_w - r_l of a constant offset is not exactly constant in
    floating point and its "correlation" would be rounding noise."""
    deltas = chosen_rewards - rejected_rewards
    num_experts = deltas.shape[-1]
    if num_experts == 1:
        return deltas.new_zeros(())
    centered = deltas - deltas.mean(dim=0, keepdim=True)
    covariance = centered.T @ centered / deltas.shape[0]
    std = covariance.diagonal().clamp_min(torch.finfo(deltas.dtype).tiny).sqrt()  # finite gradient at var = 0
    scale = torch.maximum(chosen_rewards.abs().amax(dim=0), rejected_rewards.abs().amax(dim=0))
    varying = std > (64 * torch.finfo(deltas.dtype).eps * scale).clamp_min(torch.finfo(deltas.dtype).tiny)
    safe_std = torch.where(varying, std, torch.ones_like(std))
    both_varying = varying.unsqueeze(0) & varying.unsqueeze(1)
    correlation = torch.where(both_varying, covariance / (safe_std.unsqueeze(0) * safe_std.unsqueeze(1)),
                              torch.zeros_like(covariance))
    upper = torch.triu_indices(num_experts, num_experts, offset=1, device=deltas.device)
    return correlation[upper[0], upper[1]].pow(2).mean()


def uniform_prior(routing_weights) -> torch.Tensor:
    """MiCRo Eq. 4: mean_x sum_k pi_k log pi_k (= -H, unnormalised); minimising it pushes routing toward uniform."""
    return _xlogx(routing_weights).sum(dim=-1).mean()


def preset_lambdas(preset: str) -> dict:
    """The loss weights of a preset (`single`, `vanilla`, `micro`, `sparse`, `static`)."""
    if preset not in PRESETS:
        raise InputError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return {name: PRESETS[preset][name] for name in LAMBDA_NAMES}


def loss_weights(config) -> dict:
    """The objective's weights (lambda_local, lambda_global, lambda_div, lambda_uniform) of a model config."""
    return {name: getattr(config, name) for name in LAMBDA_NAMES}


def moe_preference_loss(routing_weights, chosen_rewards, rejected_rewards, *, lambda_local, lambda_global,
                        lambda_div, lambda_uniform=0.0, global_batch: tuple | None = None) -> dict:
    """Eq. 7 (plus MiCRo's prior): L = L_RM + l_ls L_ls + l_gb L_gb + l_div L_div + l_uniform L_uniform.

    Args:
        routing_weights: (B, K) pi(x) for each pair's prompt.
        chosen_rewards, rejected_rewards: (B, K) per-expert rewards r_k(x, y_w), r_k(x, y_l).
        global_batch: (routing_weights, chosen_rewards, rejected_rewards) of the whole batch when this process
            holds a share of it (multi-process training, gathered with gradients): the batch-level terms (global
            balance, Eq. 5; expert diversity, Eq. 6) are computed on it, so N processes with batch b optimise the
            objective of one process with batch N b. The per-pair terms stay on this process's pairs.
    Returns:
        dict of scalar tensors: `loss` (weighted total) and the unweighted terms `rm`, `local_sparsity`,
        `global_balance`, `diversity`, `uniform_prior`.
    """
    if routing_weights.dim() != 2 or routing_weights.shape[0] == 0:
        raise InputError(f"routing_weights: expected a non-empty (batch, num_experts) tensor, "
                         f"got shape {tuple(routing_weights.shape)}.")
    for name, rewards in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
        if rewards.shape != routing_weights.shape:
            raise InputError(f"{name}: shape {tuple(rewards.shape)} differs from routing_weights' "
                             f"{tuple(routing_weights.shape)}; pass per-expert rewards, one row per pair.")
    check_loss_weights({"lambda_local": lambda_local, "lambda_global": lambda_global, "lambda_div": lambda_div,
                        "lambda_uniform": lambda_uniform})
    routing_weights, chosen_rewards, rejected_rewards = (
        t.float() for t in (routing_weights, chosen_rewards, rejected_rewards))
    all_routing, all_chosen, all_rejected = (
        (routing_weights, chosen_rewards, rejected_rewards) if global_batch is None
        else (t.float() for t in global_batch))
    terms = {
        "rm": mixture_nll(routing_weights, chosen_rewards, rejected_rewards),
        "local_sparsity": local_sparsity(routing_weights),
        "global_balance": global_balance(all_routing),
        "diversity": expert_diversity(all_chosen, all_rejected),
        "uniform_prior": uniform_prior(routing_weights),
    }
    terms["loss"] = (terms["rm"] + lambda_local * terms["local_sparsity"] + lambda_global * terms["global_balance"]
                     + lambda_div * terms["diversity"] + lambda_uniform * terms["uniform_prior"])
    return terms
