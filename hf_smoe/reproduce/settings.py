"""The paper's experimental settings that several reproductions (and the demo) share, each defined once."""

from ..modeling.configuration_smoe import PRESETS

# The four methods every table compares: a single reward head, the vanilla MoE, MiCRo and the sparse MoE. `static`
# (fixed uniform routing) is the base of the HyRe baseline only, so it is not among them.
COMPARED_PRESETS = tuple(preset for preset in PRESETS if preset != "static")
ROUTED_PRESETS = tuple(preset for preset in COMPARED_PRESETS if PRESETS[preset]["routing"] == "router")
SEEDS = (0, 1, 2)  # the seeds a table's mean ± std is taken over
EPOCHS = 3.0  # the paper's training length for every head
# The paper's real-world setting (§6), used by personalization, interpretability and alignment: K = 20, and
# λ_gb = 1.0 for the sparse preset, against routing collapse.
REAL_WORLD_EXPERTS = 20
REAL_WORLD_SPARSE = {"lambda_global": 1.0}
