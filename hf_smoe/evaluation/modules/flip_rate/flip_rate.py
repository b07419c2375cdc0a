"""Flip rate: among pairs misclassified with the target expert removed (w=0), the share classified correctly at
target weight w, averaged over weights and attributes. Paper Eq. 14-16."""

from hf_smoe.evaluation.modules.common import STEERING_INPUTS, metric_base, steering_arguments, weights_first
from hf_smoe.metrics import flip_rate


class FlipRate(metric_base("flip_rate", weights_first(flip_rate), STEERING_INPUTS, description=__doc__,
                           arguments=steering_arguments("<= 0 is wrong"),
                           returns="{'flip_rate': float} (NaN when no attribute has a misclassified pair)")):
    """`hf_smoe.metrics.flip_rate` as an `evaluate` metric; the math lives there."""
