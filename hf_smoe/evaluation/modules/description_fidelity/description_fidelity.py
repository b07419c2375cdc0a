"""Description fidelity: Pearson correlation between binary LLM judgments (sample matches the expert's description)
and the expert's routing weight, averaged over experts. Paper Eq. 19-20. An expert whose judgments or routing weights
are constant scores 0."""

from hf_smoe.evaluation.modules.common import FLOAT, INT, metric_base
from hf_smoe.metrics import description_fidelity

ARGUMENTS = """
    judgments (int): 1 when the LLM judges the sample to match the expert's description, else 0.
    routing_weights (float): the router activation pi_k(x) of the sample for that expert.
    experts (int): the expert k the sample was drawn for."""


class DescriptionFidelity(metric_base("description_fidelity", description_fidelity,
                                      {"judgments": INT, "routing_weights": FLOAT, "experts": INT},
                                      description=__doc__, arguments=ARGUMENTS)):
    """`hf_smoe.metrics.description_fidelity` as an `evaluate` metric; the math lives there."""
