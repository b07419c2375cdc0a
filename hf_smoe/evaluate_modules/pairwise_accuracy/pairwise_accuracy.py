"""Pairwise accuracy: share of pairs whose chosen response scores strictly higher (a tie is wrong).

Thin `evaluate` wrapper over `hf_smoe.metrics.pairwise_accuracy`; the math lives there. 
"""

import datasets
import evaluate

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, FLOAT, as_tensor


_DESCRIPTION = """Pairwise accuracy: share of pairs whose chosen response scores strictly higher (a tie is wrong). """

_KWARGS_DESCRIPTION = """
Args:
    chosen_rewards (float): reward of the chosen response, one per pair.
    rejected_rewards (float): reward of the rejected response.
Returns:
    {'pairwise_accuracy': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("pairwise_accuracy"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseAccuracy(evaluate.Metric):
    """Pairwise accuracy: share of pairs whose chosen response scores strictly higher (a tie is wrong)."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"chosen_rewards": FLOAT, "rejected_rewards": FLOAT}))

    def _compute(self, chosen_rewards, rejected_rewards):
        return {"pairwise_accuracy": metrics.pairwise_accuracy(as_tensor(chosen_rewards), as_tensor(rejected_rewards)).item()}
