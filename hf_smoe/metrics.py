"""The paper's metrics (App. A, SPEC 5) as plain torch functions that run on their inputs' device, batched.

Routing-entropy-style metrics reuse the loss functions, so each equation's math lives in exactly one place.
"""

import torch

from .losses import expert_diversity, global_balance, local_sparsity


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose chosen response scores strictly higher (a tie counts as wrong)."""
    return (chosen_rewards > rejected_rewards).float().mean()


def routing_entropy(routing_weights: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy of per-prompt routing (Eq. 4's value): 0 = one expert per prompt, 1 = uniform."""
    return local_sparsity(routing_weights.float())


def global_entropy(routing_weights: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of the mean routing over the examples (minus Eq. 5's value): 1 = experts used evenly."""
    return -global_balance(routing_weights.float())


def expert_correlation(chosen_expert_rewards: torch.Tensor, rejected_expert_rewards: torch.Tensor) -> torch.Tensor:
    """The paper's reported expert correlation: Eq. 6's mean over expert pairs of corr(Delta_i, Delta_j)^2."""
    return expert_diversity(chosen_expert_rewards.float(), rejected_expert_rewards.float())


def top_examples(routing_weights: torch.Tensor, top_n: int) -> torch.Tensor:
    """(K, n) indices of each expert's n highest-weight examples (n capped at the number of examples)."""
    return routing_weights.topk(min(top_n, routing_weights.shape[0]), dim=0).indices.T


def expert_category_labels(routing_weights: torch.Tensor, categories: torch.Tensor, num_categories: int,
                           top_n: int = 50) -> torch.Tensor:
    """(K,) category label of each expert: the majority category of its top-n examples (validation split);
    ties go to the lowest category id."""
    top = categories[top_examples(routing_weights, top_n)]  # (K, n)
    counts = torch.nn.functional.one_hot(top, num_categories).sum(dim=1)  # (K, C)
    return counts.argmax(dim=1)


def category_coverage(expert_labels: torch.Tensor, num_categories: int) -> torch.Tensor:
    """Share of categories assigned to at least one expert."""
    return torch.unique(expert_labels).numel() / torch.tensor(float(num_categories))


def expert_purity(routing_weights: torch.Tensor, categories: torch.Tensor, expert_labels: torch.Tensor,
                  top_n: int = 50) -> torch.Tensor:
    """Mean over experts of the share of its top-n examples (test split) that are in its assigned category."""
    top = categories[top_examples(routing_weights, top_n)]  # (K, n)
    return (top == expert_labels.unsqueeze(1)).float().mean()
