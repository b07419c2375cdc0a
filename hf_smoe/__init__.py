"""hf_smoe: sparse Mixture-of-Experts reward models with readable, steerable, personalizable experts.

Importing the package registers the model with transformers' Auto classes, so `AutoModel.from_pretrained(path)`
works without `trust_remote_code` where hf_smoe is installed (and with it everywhere else).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .encoding import encode_pair
from .evaluate_modules import evaluate_module_path
from .losses import moe_preference_loss
from .modeling.configuration_smoe import InputError, SMoERewardConfig
from .modeling.modeling_smoe import SMoERewardModel, SMoERewardOutput

__version__ = "0.1.0"

AutoConfig.register(SMoERewardConfig.model_type, SMoERewardConfig, exist_ok=True)
AutoModel.register(SMoERewardConfig, SMoERewardModel, exist_ok=True)
AutoModelForSequenceClassification.register(SMoERewardConfig, SMoERewardModel, exist_ok=True)
SMoERewardConfig.register_for_auto_class()
SMoERewardModel.register_for_auto_class("AutoModel")

__all__ = ["InputError", "SMoERewardConfig", "SMoERewardModel", "SMoERewardOutput", "encode_pair", "evaluate_module_path",
           "moe_preference_loss"]
