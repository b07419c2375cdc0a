"""Preference data: every supported dataset format read into one pair schema (`PAIR_FEATURES`: a chat prompt, the
chosen and the rejected response, and the category, attribute, criterion and user metadata), the seeded
train/validation/test split, simulated users, and the generated preference set with latent categories. One module
per format lives in `formats/`; `load_pairs` picks the format from the Hub name or the columns."""

from .formats.dsp import DSP_CRITERIA, DSP_RESPONSES
from .formats.helpsteer2 import HELPSTEER2_CRITERIA
from .formats.rpr import RPR_EVALUATION_ATTRIBUTES
from .formats.shp import SHP_CATEGORIES
from .loading import FORMATS, load_pairs
from .schema import CRITERION_TEMPLATE, PAIR_COLUMNS, PAIR_FEATURES, PAIR_METADATA
from .splits import split_pairs
from .synthetic import generate_preference_set
from .users import PERSONAL_LLM_REWARD_MODELS, dirichlet_users, personal_llm_users

__all__ = [
    "CRITERION_TEMPLATE", "DSP_CRITERIA", "DSP_RESPONSES", "FORMATS", "HELPSTEER2_CRITERIA", "PAIR_COLUMNS",
    "PAIR_FEATURES", "PAIR_METADATA", "PERSONAL_LLM_REWARD_MODELS", "RPR_EVALUATION_ATTRIBUTES", "SHP_CATEGORIES",
    "dirichlet_users", "generate_preference_set", "load_pairs", "personal_llm_users", "split_pairs",
]
