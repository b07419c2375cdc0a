"""Category coverage: share of categories that label at least one expert.

Thin `evaluate` wrapper over `hf_smoe.metrics.category_coverage`; the math lives there. Paper App. A; an expert's label is the majority category of its top-n (50) validation examples.
"""

import datasets
import evaluate
import torch

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, INT, VECTOR, as_tensor


_DESCRIPTION = """Category coverage: share of categories that label at least one expert. Paper App. A; an expert's label is the majority category of its top-n (50) validation examples."""

_KWARGS_DESCRIPTION = """
Args:
    routing_weights (list of float, length K): router distribution of each validation example.
    categories (int): category id of each example, in [0, num_categories).
    num_categories (int, optional): number of categories (default: max id + 1).
    top_n (int, optional): examples per expert used for its label, default 50.
Returns:
    {'category_coverage': float, 'expert_labels': list of int}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("category_coverage"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CategoryCoverage(evaluate.Metric):
    """Category coverage: share of categories that label at least one expert."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"routing_weights": VECTOR, "categories": INT}))

    def _compute(self, routing_weights, categories, num_categories=None, top_n=50):
        categories = as_tensor(categories, torch.long)
        num_categories = int(categories.max()) + 1 if num_categories is None else num_categories
        labels = metrics.expert_category_labels(as_tensor(routing_weights), categories, num_categories, top_n)
        return {"category_coverage": metrics.category_coverage(labels, num_categories).item(),
                "expert_labels": labels.tolist()}
