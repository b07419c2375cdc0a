"""Expert purity: mean over experts of the share of its top-n (50) test examples in its labelled category. Paper
Eq. 9-10."""

import torch

from hf_smoe.evaluation.modules.common import INT, VECTOR, metric_base
from hf_smoe.metrics import expert_purity

ARGUMENTS = """
    routing_weights (list of float, length K): router distribution of each test example.
    categories (int): category id of each test example.
    expert_labels (list of int, length K): category label of each expert (e.g. `expert_labels` of the
        category_coverage module on validation data). Required.
    top_n (int, optional): default 50."""


def purity(routing_weights, categories, expert_labels, top_n=50):
    return expert_purity(routing_weights, categories, torch.as_tensor(expert_labels, dtype=torch.long), top_n)


class ExpertPurity(metric_base("expert_purity", purity, {"routing_weights": VECTOR, "categories": INT},
                               description=__doc__, arguments=ARGUMENTS)):
    """`hf_smoe.metrics.expert_purity` as an `evaluate` metric; the math lives there."""
