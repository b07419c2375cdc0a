"""Expert correlation: mean over expert pairs of the squared Pearson correlation of reward margins. Paper Eq. 6."""

from hf_smoe.evaluation.modules.common import EXPERT_REWARD_ARGUMENTS, EXPERT_REWARDS, metric_base
from hf_smoe.metrics import expert_correlation


class ExpertCorrelation(metric_base("expert_correlation", expert_correlation, EXPERT_REWARDS,
                                    description=__doc__, arguments=EXPERT_REWARD_ARGUMENTS)):
    """`hf_smoe.metrics.expert_correlation` as an `evaluate` metric; the math lives there."""
