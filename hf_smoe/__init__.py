"""hf_smoe: sparse Mixture-of-Experts reward models with readable, steerable, personalizable experts.

Importing the package registers the model with transformers' Auto classes, so `AutoModel.from_pretrained(path)`
works without `trust_remote_code` where hf_smoe is installed (and with it everywhere else). The modules are grouped in
subpackages, one per concern, that import only downward (docs/design-notes.md).
"""

__version__ = "0.1.0"  # the distribution's version too (pyproject.toml reads it from here)

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .errors import InputError
from .evaluation import evaluate_module_path
from .features import encode_pair
from .losses import moe_preference_loss
from .modeling.configuration_smoe import SMoERewardConfig
from .modeling.modeling_smoe import SMoERewardModel, SMoERewardOutput


AutoConfig.register(SMoERewardConfig.model_type, SMoERewardConfig, exist_ok=True)
AutoModel.register(SMoERewardConfig, SMoERewardModel, exist_ok=True)
AutoModelForSequenceClassification.register(SMoERewardConfig, SMoERewardModel, exist_ok=True)
SMoERewardConfig.register_for_auto_class()
SMoERewardModel.register_for_auto_class("AutoModel")

__all__ = ["InputError", "SMoERewardConfig", "SMoERewardModel", "SMoERewardOutput", "encode_pair", "evaluate_module_path",
           "moe_preference_loss"]
