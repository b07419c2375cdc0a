"""Expert correlation: mean over expert pairs of the squared Pearson correlation of reward margins.

Thin `evaluate` wrapper over `hf_smoe.metrics.expert_correlation`; the math lives there. Paper Eq. 6.
"""

import datasets
import evaluate

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, VECTOR, as_tensor


_DESCRIPTION = """Expert correlation: mean over expert pairs of the squared Pearson correlation of reward margins. Paper Eq. 6."""

_KWARGS_DESCRIPTION = """
Args:
    chosen_expert_rewards (list of float, length K): each expert's reward of the chosen response.
    rejected_expert_rewards (list of float, length K): each expert's reward of the rejected response.
Returns:
    {'expert_correlation': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("expert_correlation"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpertCorrelation(evaluate.Metric):
    """Expert correlation: mean over expert pairs of the squared Pearson correlation of reward margins."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"chosen_expert_rewards": VECTOR, "rejected_expert_rewards": VECTOR}))

    def _compute(self, chosen_expert_rewards, rejected_expert_rewards):
        value = metrics.expert_correlation(as_tensor(chosen_expert_rewards), as_tensor(rejected_expert_rewards))
        return {"expert_correlation": value.item()}
