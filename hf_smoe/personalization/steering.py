"""Steering by routing intervention (paper §5.2): turn one expert up or down and watch preferences flip.

The intervention replaces the router's output and nothing else, so it runs on cached features: the expert rewards
of a pair do not depend on the routing. Target experts are chosen from validation routing, flip rates are the
paper's Eq. 14-18 (`hf_smoe.metrics.flip_rate`, `undesired_flip_rate`).
"""

import torch

from ..errors import InputError
from ..metrics import _nanmean, flip_rate, top_examples, undesired_flip_rate
from ..modeling.modeling_smoe import mixture_reward

STEERING_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


def intervene(routing_weights: torch.Tensor, expert, weight: float) -> torch.Tensor:
    """The routing intervention of §5.2: expert k's weight becomes `weight` and the others are rescaled to sum to
    1 - `weight`, keeping their ratios (w = 0 removes the expert).

    routing_weights (N, K); expert: an int, or an (N,) tensor of one target expert per row. When every other expert
    had weight 0 (the router put all mass on k), they share 1 - w equally, so each row still sums to 1.
    """
    num_experts = routing_weights.shape[-1]
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"weight: the target expert's weight must be in [0, 1], got {weight}.")
    expert = torch.as_tensor(expert, device=routing_weights.device).long().expand(routing_weights.shape[0])
    if expert.numel() and not (0 <= int(expert.min()) and int(expert.max()) < num_experts):
        raise InputError(f"expert: must be in [0, {num_experts - 1}], got {sorted(set(expert.tolist()))}.")
    if num_experts == 1 and weight != 1.0:
        raise InputError("weight: a model with one expert can only give it weight 1.")
    target = torch.nn.functional.one_hot(expert, num_experts).bool()
    others = routing_weights.masked_fill(target, 0.0)
    total = others.sum(dim=-1, keepdim=True)
    even = (~target).to(routing_weights.dtype) / max(num_experts - 1, 1)
    share = torch.where(total > 0, others / total.clamp_min(torch.finfo(routing_weights.dtype).tiny), even)
    return torch.where(target, torch.full_like(share, weight), share * (1.0 - weight))


def target_experts(routing_weights: torch.Tensor, attributes: torch.Tensor, num_attributes: int,
                   top_n: int = 100) -> torch.Tensor:
    """(A,) target expert of each attribute: the expert whose top-n validation examples (by routing weight) hold the
    highest share of that attribute (§5.2); ties go to the lower expert index."""
    top = attributes.long()[top_examples(routing_weights, top_n)]  # (K, n)
    shares = torch.nn.functional.one_hot(top, num_attributes).float().mean(dim=1)  # (K, A)
    return shares.argmax(dim=0)


def steered_margins(routing_weights, chosen_expert_rewards, rejected_expert_rewards, experts,
                    weights=(0.0, *STEERING_WEIGHTS)) -> torch.Tensor:
    """(W, N) reward margins r(x, y_w) - r(x, y_l) with each pair's target expert (`experts`, (N,)) set to each w."""
    margins = [mixture_reward(steered, chosen_expert_rewards).squeeze(-1)
               - mixture_reward(steered, rejected_expert_rewards).squeeze(-1)
               for steered in (intervene(routing_weights, experts, w) for w in weights)]
    return torch.stack(margins)


def steering_report(routing_weights, chosen_expert_rewards, rejected_expert_rewards, attributes: torch.Tensor,
                    targets: torch.Tensor, weights=STEERING_WEIGHTS) -> dict:
    """Flip rate (Eq. 14-16) and undesired flip rate (Eq. 17-18) of steering each test pair's attribute toward its
    target expert, overall and per weight w. `attributes` (N,) are attribute ids, `targets` (A,) experts."""
    margins = steered_margins(routing_weights, chosen_expert_rewards, rejected_expert_rewards,
                              targets[attributes.long()], (0.0, *weights))
    base, steered = margins[0], margins[1:]
    tables = {name: metric(base, steered, attributes, len(targets), return_table=True)
              for name, metric in (("flip_rate", flip_rate), ("undesired_flip_rate", undesired_flip_rate))}
    report = {name: _nanmean(table).item() for name, table in tables.items()}
    for name, table in tables.items():
        report[f"{name}_by_weight"] = {w: _nanmean(table[:, i]).item() for i, w in enumerate(weights)}
    return report


def random_target_report(routing_weights, chosen_expert_rewards, rejected_expert_rewards, attributes, num_experts,
                         num_attributes, weights=STEERING_WEIGHTS, draws: int = 20, seed: int = 0) -> dict:
    """The paper's random baseline: the same steering with target experts drawn uniformly at random, averaged over
    `draws` seeded draws of one expert per attribute."""
    generator = torch.Generator().manual_seed(seed)
    reports = [steering_report(routing_weights, chosen_expert_rewards, rejected_expert_rewards, attributes,
                               torch.randint(num_experts, (num_attributes,), generator=generator), weights)
               for _ in range(draws)]
    return {key: (sum(r[key] for r in reports) / draws if not isinstance(reports[0][key], dict) else
                  {w: sum(r[key][w] for r in reports) / draws for w in weights}) for key in reports[0]}
