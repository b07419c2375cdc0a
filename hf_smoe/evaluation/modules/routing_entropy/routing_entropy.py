"""Routing entropy: mean normalised entropy of per-prompt routing (0 = one expert, 1 = uniform). Paper Eq. 4."""

from hf_smoe.evaluation.modules.common import ROUTING_ARGUMENT, VECTOR, metric_base
from hf_smoe.metrics import routing_entropy


class RoutingEntropy(metric_base("routing_entropy", routing_entropy, {"routing_weights": VECTOR},
                                 description=__doc__, arguments=ROUTING_ARGUMENT)):
    """`hf_smoe.metrics.routing_entropy` as an `evaluate` metric; the math lives there."""
