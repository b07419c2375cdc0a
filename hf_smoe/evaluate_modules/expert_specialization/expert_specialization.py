"""Expert specialization: an expert's accuracy on its examples minus the mean accuracy of all experts there, averaged over experts.

Thin `evaluate` wrapper over `hf_smoe.metrics.expert_specialization`; the math lives there. Paper Eq. 11-13. Config 'default' (or 'category'): category version, Eq. 11; config 'top_percent': top-m% version, Eq. 12.
"""

import datasets
import evaluate
import torch

from hf_smoe import metrics
from hf_smoe.evaluate_modules.common import CITATION, INT, VECTOR, as_tensor


_DESCRIPTION = """Expert specialization: an expert's accuracy on its examples minus the mean accuracy of all experts there, averaged over experts. Paper Eq. 11-13. Config 'default' (or 'category'): category version, Eq. 11; config 'top_percent': top-m% version, Eq. 12."""

_KWARGS_DESCRIPTION = """
Args:
    chosen_expert_rewards (list of float, length K): each expert's reward of the chosen response.
    rejected_expert_rewards (list of float, length K): each expert's reward of the rejected response.
    categories (int; 'default'/'category' config): category id of each test example.
    expert_labels (list of int, length K; 'default'/'category' config): each expert's category. Required there.
    num_categories (int, optional; 'default'/'category' config).
    routing_weights (list of float, length K; 'top_percent' config): router distribution of each test example.
    top_percent (float, optional; 'top_percent' config): m, default 10.
Returns:
    {'expert_specialization': float}
Example:
    >>> import evaluate
    >>> from hf_smoe.evaluate_modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("expert_specialization"))
"""


_CATEGORY = datasets.Features({"chosen_expert_rewards": VECTOR, "rejected_expert_rewards": VECTOR, "categories": INT})
FEATURES = {"default": _CATEGORY, "category": _CATEGORY,
            "top_percent": datasets.Features({"chosen_expert_rewards": VECTOR, "rejected_expert_rewards": VECTOR,
                                              "routing_weights": VECTOR})}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpertSpecialization(evaluate.Metric):
    """Expert specialization: an expert's accuracy on its examples minus the mean accuracy of all experts there, averaged over experts."""

    def _info(self):
        if self.config_name not in FEATURES:
            raise KeyError(f"config must be one of {sorted(FEATURES)}, got {self.config_name!r}")
        return evaluate.MetricInfo(description=_DESCRIPTION, citation=CITATION, inputs_description=_KWARGS_DESCRIPTION,
                                   features=FEATURES[self.config_name])

    def _compute(self, chosen_expert_rewards, rejected_expert_rewards, categories=None, routing_weights=None,
                 expert_labels=None, num_categories=None, top_percent=10.0):
        chosen, rejected = as_tensor(chosen_expert_rewards), as_tensor(rejected_expert_rewards)
        if self.config_name == "top_percent":
            value = metrics.expert_specialization_top(chosen, rejected, as_tensor(routing_weights), top_percent)
        else:
            if expert_labels is None:
                raise ValueError("the category version needs expert_labels=[label of each expert]")
            value = metrics.expert_specialization(chosen, rejected, as_tensor(categories, torch.long),
                                                  torch.as_tensor(expert_labels, dtype=torch.long), num_categories)
        return {"expert_specialization": value.item()}
