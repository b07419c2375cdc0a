"""Description fidelity: Pearson correlation between binary LLM judgments (sample matches the expert's description) and the expert's routing weight, averaged over experts.

Thin `evaluate` wrapper over `hf_smoe.metrics.description_fidelity`; the math lives there. Paper Eq. 19-20. An expert whose judgments or routing weights are constant scores 0.
"""

import datasets
import evaluate
import torch

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, FLOAT, INT, as_tensor


_DESCRIPTION = """Description fidelity: Pearson correlation between binary LLM judgments (sample matches the expert's description) and the expert's routing weight, averaged over experts. Paper Eq. 19-20. An expert whose judgments or routing weights are constant scores 0."""

_KWARGS_DESCRIPTION = """
Args:
    judgments (int): 1 when the LLM judges the sample to match the expert's description, else 0.
    routing_weights (float): the router activation pi_k(x) of the sample for that expert.
    experts (int): the expert k the sample was drawn for.
Returns:
    {'description_fidelity': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("description_fidelity"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DescriptionFidelity(evaluate.Metric):
    """Description fidelity: Pearson correlation between binary LLM judgments (sample matches the expert's description) and the expert's routing weight, averaged over experts."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"judgments": INT, "routing_weights": FLOAT, "experts": INT}))

    def _compute(self, judgments, routing_weights, experts):
        value = metrics.description_fidelity(as_tensor(judgments), as_tensor(routing_weights), as_tensor(experts, torch.long))
        return {"description_fidelity": value.item()}
