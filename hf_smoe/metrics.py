"""The paper's metrics (App. A, Eq. 8-20) as plain torch functions that run on their inputs' device, batched.

Routing-entropy-style metrics reuse the loss functions, so each equation's math lives in exactly one place.

Conventions shared by every function here:

- a pair (or an expert on a pair) is *correct* when its reward margin is strictly positive: a tie counts as wrong,
  as in `pairwise_accuracy`; a bool tensor is taken as the correctness flags themselves;
- "top-n examples of expert k" are the n examples with the largest routing weight pi_k(x), ranked by a *stable*
  descending sort: ties in routing weight go to the lower example index, on every device (`torch.topk`'s order
  for ties is unspecified, so it is not used). An expert that is never the argmax expert (even one with weight 0
  everywhere) still has a top-n set; with all-equal weights it is the first n examples;
- an average over a set that is empty (a category with no test example, an attribute with no misclassified pair)
  is undefined: that term is left out of the outer average (NaN when every term is left out), never counted as 0.
"""

import math

import torch

from .errors import InputError
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
    """(K, n) indices of each expert's n highest-weight examples (n capped at the number of examples), best first;
    ties in routing weight go to the lower example index (stable sort), on every device."""
    n = min(top_n, routing_weights.shape[0])
    return torch.sort(routing_weights, dim=0, descending=True, stable=True).indices[:n].T


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


def _correct(margins_or_flags: torch.Tensor) -> torch.Tensor:
    """Correctness flags: a bool tensor as is, otherwise margin > 0 (a tie counts as wrong)."""
    if margins_or_flags.dtype == torch.bool:
        return margins_or_flags
    return margins_or_flags > 0


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the defined (non-NaN) entries; NaN when there is none."""
    return values.nanmean()


def expert_specialization(chosen_expert_rewards: torch.Tensor, rejected_expert_rewards: torch.Tensor,
                          categories: torch.Tensor, expert_labels: torch.Tensor, num_categories: int | None = None,
                          per_expert: bool = False) -> torch.Tensor:
    """Category expert specialization (App. A, Eq. 11 and 13) on test examples.

    Acc_j(c) is expert j's pairwise accuracy (r_j(x, y_w) > r_j(x, y_l)) on the test examples of category c;
    Spec_k = Acc_k(c_k) - (1/K) sum_j Acc_j(c_k) with c_k = expert_labels[k] (from `expert_category_labels` on the
    validation split); the score is the mean of Spec_k over experts (Eq. 13).

    Args: chosen/rejected_expert_rewards (N, K); categories (N,) int ids in [0, num_categories); expert_labels (K,).
    Edge cases: an expert whose labelled category has no test example has Spec_k = NaN and is left out of the mean
    (NaN when that holds for every expert). Several experts may share a label; each is scored on its own.
    With `per_expert=True` the (K,) vector of Spec_k is returned instead of the mean.
    """
    correct = (chosen_expert_rewards.float() > rejected_expert_rewards.float()).float()  # (N, K)
    categories = categories.long().to(correct.device)
    expert_labels = expert_labels.long().to(correct.device)
    if num_categories is None:
        num_categories = int(max(categories.max().item() if categories.numel() else -1,
                                 expert_labels.max().item() if expert_labels.numel() else -1)) + 1
    members = torch.nn.functional.one_hot(categories, num_categories).float()  # (N, C)
    counts = members.sum(dim=0)  # (C,)
    accuracy = (members.T @ correct) / counts.unsqueeze(1)  # (C, K): NaN rows for empty categories
    own = accuracy[expert_labels, torch.arange(correct.shape[1], device=correct.device)]  # (K,)
    scores = own - accuracy[expert_labels].mean(dim=1)
    return scores if per_expert else _nanmean(scores)


def top_percent_count(num_examples: int, top_percent: float) -> int:
    """Size of a top-m% set: ceil(m% of N), at least 1 (for N > 0) and at most N."""
    if not 0 < top_percent <= 100:
        raise InputError(f"top_percent must be in (0, 100], got {top_percent}")
    if num_examples == 0:
        return 0
    return min(num_examples, max(1, math.ceil(round(top_percent * num_examples / 100, 9))))


def expert_specialization_top(chosen_expert_rewards: torch.Tensor, rejected_expert_rewards: torch.Tensor,
                              routing_weights: torch.Tensor, top_percent: float = 10.0,
                              per_expert: bool = False) -> torch.Tensor:
    """Top-m% expert specialization, for data without categories (App. A, Eq. 12 and 13; m = 10 in the paper).

    T_k = the top m% test examples by pi_k(x) (ceil(m% of N) examples, at least 1; ties to the lower index, see the
    module docstring); Spec_k = Acc_k(T_k) - (1/K) sum_j Acc_j(T_k); the score is the mean over experts.
    Args: chosen/rejected_expert_rewards (N, K); routing_weights (N, K). Every expert has a T_k, including one that
    is never the argmax expert. `per_expert=True` returns the (K,) Spec_k vector.
    """
    correct = (chosen_expert_rewards.float() > rejected_expert_rewards.float()).float()  # (N, K)
    n = top_percent_count(correct.shape[0], top_percent)
    if n == 0:
        scores = correct.new_full((correct.shape[1],), float("nan"))
        return scores if per_expert else _nanmean(scores)
    top = top_examples(routing_weights.to(correct.device), n)  # (K, n)
    accuracy = correct[top].mean(dim=1)  # (K, K): [k, j] = Acc_j(T_k)
    scores = accuracy.diagonal() - accuracy.mean(dim=1)
    return scores if per_expert else _nanmean(scores)


def _flip_table(base, steered, attributes, num_attributes, want_base_correct: bool, flip_to_correct: bool):
    """(A, W) table of flip rates: among pairs whose w=0 correctness is `want_base_correct` in attribute a, the
    share whose correctness at weight w is `flip_to_correct`; NaN where that set is empty."""
    base_ok = _correct(base)
    steered = steered if steered.dim() == 2 else steered.unsqueeze(0)  # (W, N)
    steered_ok = _correct(steered).to(base_ok.device)
    if attributes is None:
        attributes = torch.zeros_like(base_ok, dtype=torch.long)
    attributes = attributes.long().to(base_ok.device)
    if num_attributes is None:
        num_attributes = int(attributes.max().item()) + 1 if attributes.numel() else 1
    in_set = (base_ok == want_base_correct).float()  # (N,)
    members = torch.nn.functional.one_hot(attributes, num_attributes).float() * in_set.unsqueeze(1)  # (N, A)
    hits = (steered_ok == flip_to_correct).float()  # (W, N)
    return (hits @ members / members.sum(dim=0)).T  # (A, W); 0/0 = NaN for an empty set


def flip_rate(base_margins: torch.Tensor, steered_margins: torch.Tensor, attributes: torch.Tensor | None = None,
              num_attributes: int | None = None, return_table: bool = False) -> torch.Tensor:
    """Steering flip rate (App. A, Eq. 14-16).

    base_margins (N,): r(x, y_a^+) - r(x, y_a^-) with the target expert removed (w = 0), for attribute a's preferred
    response y_a^+ (or bool correctness flags); steered_margins (W, N) or (N,): the same at each target weight w;
    attributes (N,): attribute id of each pair (default: one attribute).
    M_a = pairs of attribute a misclassified at w = 0 (Eq. 14; margin <= 0, a tie is wrong);
    FR(a, w) = share of M_a classified correctly at w (Eq. 15); FR = mean over attributes and weights (Eq. 16).
    Edge case: an attribute with no misclassified pair has FR(a, w) = NaN and is left out of the mean (NaN when no
    attribute has one). `return_table=True` returns the (A, W) table of FR(a, w).
    """
    table = _flip_table(base_margins, steered_margins, attributes, num_attributes, False, True)
    return table if return_table else _nanmean(table)


def undesired_flip_rate(base_margins: torch.Tensor, steered_margins: torch.Tensor,
                        attributes: torch.Tensor | None = None, num_attributes: int | None = None,
                        return_table: bool = False) -> torch.Tensor:
    """Undesired flip rate (App. A/F, Eq. 17-18), averaged over attributes and weights like Eq. 16.

    Inputs as for `flip_rate`. C_a = pairs of attribute a correct at w = 0 (Eq. 17; margin > 0);
    UFR(a, w) = share of C_a misclassified at w (Eq. 18). An attribute with no correct pair at w = 0 has
    UFR(a, w) = NaN and is left out of the mean (NaN when every attribute is). `return_table` as in `flip_rate`.
    """
    table = _flip_table(base_margins, steered_margins, attributes, num_attributes, True, False)
    return table if return_table else _nanmean(table)


def description_fidelity(judgments: torch.Tensor, routing_weights: torch.Tensor,
                         experts: torch.Tensor | None = None, num_experts: int | None = None,
                         per_expert: bool = False) -> torch.Tensor:
    """Description fidelity (App. A, Eq. 19-20).

    judgments (N,): binary LLM judgment z_k(x) in {0, 1} of whether sample x matches expert k's description;
    routing_weights (N,): the router activation pi_k(x) of that sample for that expert; experts (N,): the expert k
    each sample was drawn for (default: one expert). DF_k = Pearson corr over S_k of (z_k(x), pi_k(x)) (Eq. 19);
    DF = mean of DF_k over the experts that have samples (Eq. 20).
    Edge case: when z_k or pi_k is constant over S_k (e.g. the LLM says "matches" for every sample), or S_k has
    fewer than 2 samples, Pearson is undefined and DF_k is defined as **0**: the description then carries no
    information about the routing, and Eq. 20 keeps averaging over all K experts. An expert with no samples is
    left out (NaN in the per-expert vector). `per_expert=True` returns the (K,) vector of DF_k.
    The paper samples S_k as 100 examples from the top 10% of pi_k plus 100 from the rest (App. A); sampling is
    the caller's job.
    """
    dtype = torch.float64 if routing_weights.device.type != "mps" else torch.float32
    z = judgments.to(device=routing_weights.device, dtype=dtype)
    p = routing_weights.to(dtype)
    if experts is None:
        experts = torch.zeros(z.shape, dtype=torch.long, device=z.device)
    experts = experts.long().to(z.device)
    if num_experts is None:
        num_experts = int(experts.max().item()) + 1 if experts.numel() else 1

    def group_sum(values):
        return values.new_zeros(num_experts).index_add_(0, experts, values)

    def group_constant(values):
        high = values.new_full((num_experts,), -math.inf).scatter_reduce(0, experts, values, "amax")
        low = values.new_full((num_experts,), math.inf).scatter_reduce(0, experts, values, "amin")
        return high == low

    counts = group_sum(torch.ones_like(z))
    zc = z - (group_sum(z) / counts)[experts]
    pc = p - (group_sum(p) / counts)[experts]
    denominator = (group_sum(zc * zc) * group_sum(pc * pc)).sqrt()
    undefined = group_constant(z) | group_constant(p) | (counts < 2)
    scores = torch.where(undefined, torch.zeros_like(denominator),
                         (group_sum(zc * pc) / denominator).clamp(-1, 1))
    scores = torch.where(counts == 0, torch.full_like(scores, float("nan")), scores).float()
    return scores if per_expert else _nanmean(scores)


def judgment_auc(scores: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """How well a judge's P(YES) ranks the prompts that match a description above the others: the probability that
    a random matching prompt gets a higher score than a random other one, ties counted half (the Mann-Whitney form
    of the area under the ROC curve). 1.0 separates perfectly, 0.5 is chance; unlike the binary fidelity it does not
    depend on where the YES threshold sits. NaN when either class is empty.

    scores (N,): P(YES) of each prompt; matches (N,) bool: whether the prompt shows the described feature."""
    scores = torch.as_tensor(scores).flatten()
    scores = scores.to(torch.float64 if scores.device.type != "mps" else torch.float32)
    matches = torch.as_tensor(matches, device=scores.device).flatten().bool()
    positives, negatives = int(matches.sum()), int((~matches).sum())
    if positives == 0 or negatives == 0:
        return scores.new_tensor(float("nan"))
    # average ranks (1-based, ties share the mean of their ranks): U = rank sum of the matches - P(P+1)/2
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ranks = (torch.cumsum(counts, 0) - counts + (counts + 1) / 2).to(scores.dtype)[inverse]
    return (ranks[matches].sum() - positives * (positives + 1) / 2) / (positives * negatives)


COLLAPSED_BELOW_GLOBAL_ENTROPY = 0.5
DENSE_ABOVE_ROUTING_ENTROPY = 0.5


def routing_diagnosis(routing_entropy: float, global_entropy: float) -> str:
    """The collapse diagnosis of Table 8: healthy routing is sparse per prompt (low routing entropy) *and* spread over
    the experts (high global entropy). `collapsed`: most prompts go to the same few experts (global entropy < 0.5);
    `dense`: the router mixes experts near-uniformly (routing entropy > 0.5); otherwise `healthy`."""
    if global_entropy < COLLAPSED_BELOW_GLOBAL_ENTROPY:
        return "collapsed"
    if routing_entropy > DENSE_ABOVE_ROUTING_ENTROPY:
        return "dense"
    return "healthy"
