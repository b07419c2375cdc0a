"""Routing entropy: mean normalised entropy of per-prompt routing (0 = one expert, 1 = uniform).

Thin `evaluate` wrapper over `hf_smoe.metrics.routing_entropy`; the math lives there. Paper Eq. 4.
"""

import datasets
import evaluate

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, VECTOR, as_tensor


_DESCRIPTION = """Routing entropy: mean normalised entropy of per-prompt routing (0 = one expert, 1 = uniform). Paper Eq. 4."""

_KWARGS_DESCRIPTION = """
Args:
    routing_weights (list of float, length K): router distribution pi(x) of each example.
Returns:
    {'routing_entropy': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("routing_entropy"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RoutingEntropy(evaluate.Metric):
    """Routing entropy: mean normalised entropy of per-prompt routing (0 = one expert, 1 = uniform)."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"routing_weights": VECTOR}))

    def _compute(self, routing_weights):
        return {"routing_entropy": metrics.routing_entropy(as_tensor(routing_weights)).item()}
