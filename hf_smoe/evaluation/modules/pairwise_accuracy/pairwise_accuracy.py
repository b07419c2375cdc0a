"""Pairwise accuracy: share of pairs whose chosen response scores strictly higher (a tie is wrong)."""

from hf_smoe.evaluation.modules.common import FLOAT, metric_base
from hf_smoe.metrics import pairwise_accuracy

ARGUMENTS = """
    chosen_rewards (float): reward of the chosen response, one per pair.
    rejected_rewards (float): reward of the rejected response."""


class PairwiseAccuracy(metric_base("pairwise_accuracy", pairwise_accuracy,
                                   {"chosen_rewards": FLOAT, "rejected_rewards": FLOAT},
                                   description=__doc__, arguments=ARGUMENTS)):
    """`hf_smoe.metrics.pairwise_accuracy` as an `evaluate` metric; the math lives there."""
