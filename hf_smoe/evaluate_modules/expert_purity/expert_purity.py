"""Expert purity: mean over experts of the share of its top-n (50) test examples in its labelled category.

Thin `evaluate` wrapper over `hf_smoe.metrics.expert_purity`; the math lives there. Paper Eq. 9-10.
"""

import datasets
import evaluate
import torch

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, INT, VECTOR, as_tensor


_DESCRIPTION = """Expert purity: mean over experts of the share of its top-n (50) test examples in its labelled category. Paper Eq. 9-10."""

_KWARGS_DESCRIPTION = """
Args:
    routing_weights (list of float, length K): router distribution of each test example.
    categories (int): category id of each test example.
    expert_labels (list of int, length K): category label of each expert (e.g. `expert_labels` of the
        category_coverage module on validation data). Required.
    top_n (int, optional): default 50.
Returns:
    {'expert_purity': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("expert_purity"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpertPurity(evaluate.Metric):
    """Expert purity: mean over experts of the share of its top-n (50) test examples in its labelled category."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"routing_weights": VECTOR, "categories": INT}))

    def _compute(self, routing_weights, categories, expert_labels, top_n=50):
        value = metrics.expert_purity(as_tensor(routing_weights), as_tensor(categories, torch.long),
                                      torch.as_tensor(expert_labels, dtype=torch.long), top_n)
        return {"expert_purity": value.item()}
