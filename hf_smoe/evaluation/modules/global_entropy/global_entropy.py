"""Global entropy: normalised entropy of the mean routing over examples (1 = experts used evenly). Paper Eq. 5
(negated)."""

from hf_smoe.evaluation.modules.common import ROUTING_ARGUMENT, VECTOR, metric_base
from hf_smoe.metrics import global_entropy


class GlobalEntropy(metric_base("global_entropy", global_entropy, {"routing_weights": VECTOR},
                                description=__doc__, arguments=ROUTING_ARGUMENT)):
    """`hf_smoe.metrics.global_entropy` as an `evaluate` metric; the math lives there."""
