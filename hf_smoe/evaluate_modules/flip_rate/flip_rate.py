"""Flip rate: among pairs misclassified with the target expert removed (w=0), the share classified correctly at target weight w, averaged over weights and attributes.

Thin `evaluate` wrapper over `hf_smoe.metrics.flip_rate`; the math lives there. Paper Eq. 14-16.
"""

import datasets
import evaluate
import torch

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, FLOAT, INT, VECTOR, as_tensor


_DESCRIPTION = """Flip rate: among pairs misclassified with the target expert removed (w=0), the share classified correctly at target weight w, averaged over weights and attributes. Paper Eq. 14-16."""

_KWARGS_DESCRIPTION = """
Args:
    base_margins (float): r(x, y+) - r(x, y-) at w=0 for the attribute's preferred response y+ (<= 0 is wrong).
    steered_margins (list of float, length W): the same margin at each target weight w.
    attributes (int): attribute id of each pair (0 everywhere for one attribute).
Returns:
    {'flip_rate': float} (NaN when no attribute has a misclassified pair)
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("flip_rate"))
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FlipRate(evaluate.Metric):
    """Flip rate: among pairs misclassified with the target expert removed (w=0), the share classified correctly at target weight w, averaged over weights and attributes."""

    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"base_margins": FLOAT, "steered_margins": VECTOR, "attributes": INT}))

    def _compute(self, base_margins, steered_margins, attributes):
        value = metrics.flip_rate(as_tensor(base_margins), as_tensor(steered_margins).T, as_tensor(attributes, torch.long))
        return {"flip_rate": value.item()}
