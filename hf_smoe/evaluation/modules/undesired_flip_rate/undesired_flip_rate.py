"""Undesired flip rate: among pairs correct with the target expert removed (w=0), the share misclassified at target
weight w, averaged over weights and attributes. Paper Eq. 17-18."""

from hf_smoe.evaluation.modules.common import STEERING_INPUTS, metric_base, steering_arguments, weights_first
from hf_smoe.metrics import undesired_flip_rate


class UndesiredFlipRate(metric_base("undesired_flip_rate", weights_first(undesired_flip_rate), STEERING_INPUTS,
                                    description=__doc__, arguments=steering_arguments("> 0 is correct"),
                                    returns="{'undesired_flip_rate': float} (NaN when no attribute has a correct "
                                            "pair)")):
    """`hf_smoe.metrics.undesired_flip_rate` as an `evaluate` metric; the math lives there."""
