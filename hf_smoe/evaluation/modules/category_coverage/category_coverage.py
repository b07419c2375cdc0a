"""Category coverage: share of categories that label at least one expert. Paper App. A; an expert's label is the
majority category of its top-n (50) validation examples."""

from hf_smoe.evaluation.modules.common import INT, VECTOR, metric_base
from hf_smoe.metrics import category_coverage, expert_category_labels

ARGUMENTS = """
    routing_weights (list of float, length K): router distribution of each validation example.
    categories (int): category id of each example, in [0, num_categories).
    num_categories (int, optional): number of categories (default: max id + 1).
    top_n (int, optional): examples per expert used for its label, default 50."""


def coverage_and_labels(routing_weights, categories, num_categories=None, top_n=50) -> dict:
    num_categories = int(categories.max()) + 1 if num_categories is None else num_categories
    labels = expert_category_labels(routing_weights, categories, num_categories, top_n)
    return {"category_coverage": category_coverage(labels, num_categories).item(), "expert_labels": labels.tolist()}


class CategoryCoverage(metric_base("category_coverage", coverage_and_labels,
                                   {"routing_weights": VECTOR, "categories": INT}, description=__doc__,
                                   arguments=ARGUMENTS, returns="{'category_coverage': float, 'expert_labels': "
                                                               "list of int}")):
    """`hf_smoe.metrics.category_coverage` (with `expert_category_labels`) as an `evaluate` metric."""
