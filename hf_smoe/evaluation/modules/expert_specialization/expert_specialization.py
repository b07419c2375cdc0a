"""Expert specialization: an expert's accuracy on its examples minus the mean accuracy of all experts there, averaged
over experts. Paper Eq. 11-13. Config 'default' (or 'category'): category version, Eq. 11; config 'top_percent':
top-m% version, Eq. 12."""

import torch

from hf_smoe.evaluation.modules.common import EXPERT_REWARD_ARGUMENTS, EXPERT_REWARDS, INT, VECTOR, metric_base
from hf_smoe.metrics import expert_specialization, expert_specialization_top

ARGUMENTS = EXPERT_REWARD_ARGUMENTS + """
    categories (int; 'default'/'category' config): category id of each test example.
    expert_labels (list of int, length K; 'default'/'category' config): each expert's category. Required there.
    num_categories (int, optional; 'default'/'category' config).
    routing_weights (list of float, length K; 'top_percent' config): router distribution of each test example.
    top_percent (float, optional; 'top_percent' config): m, default 10."""
BY_CATEGORY = {**EXPERT_REWARDS, "categories": INT}
BY_TOP_PERCENT = {**EXPERT_REWARDS, "routing_weights": VECTOR}


def by_category(chosen_expert_rewards, rejected_expert_rewards, categories, expert_labels=None, num_categories=None):
    if expert_labels is None:
        raise ValueError("the category version needs expert_labels=[label of each expert]")
    return expert_specialization(chosen_expert_rewards, rejected_expert_rewards, categories,
                                 torch.as_tensor(expert_labels, dtype=torch.long), num_categories)


class ExpertSpecialization(metric_base("expert_specialization", by_category, BY_CATEGORY, description=__doc__,
                                       arguments=ARGUMENTS,
                                       configs={"category": (by_category, BY_CATEGORY),
                                                "top_percent": (expert_specialization_top, BY_TOP_PERCENT)})):
    """`hf_smoe.metrics.expert_specialization` and `expert_specialization_top` as an `evaluate` metric."""
