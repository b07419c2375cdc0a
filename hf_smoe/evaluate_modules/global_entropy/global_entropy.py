"""Global entropy: normalised entropy of the mean routing over examples (1 = experts used evenly).

Thin `evaluate` wrapper over `hf_smoe.metrics.global_entropy`; the math lives there. Paper Eq. 5 (negated).
"""

import datasets
import evaluate

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, VECTOR, as_tensor


_DESCRIPTION = """Global entropy: normalised entropy of the mean routing over examples (1 = experts used evenly). Paper Eq. 5 (negated)."""

_KWARGS_DESCRIPTION = """
Args:
    routing_weights (list of float, length K): router distribution pi(x) of each example.
Returns:
    {'global_entropy': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("global_entropy"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlobalEntropy(evaluate.Metric):
    """Global entropy: normalised entropy of the mean routing over examples (1 = experts used evenly)."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"routing_weights": VECTOR}))

    def _compute(self, routing_weights):
        return {"global_entropy": metrics.global_entropy(as_tensor(routing_weights)).item()}
