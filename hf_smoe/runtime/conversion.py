"""GGUF to safetensors, once: transformers de-quantizes a GGUF file on every load (~30 s for SmolLM2) and refuses to
save a GGUF-loaded model, so each GGUF model is converted once into a plain safetensors folder (model + tokenizer +
chat template) under the hf_smoe cache, one process at a time, and loaded from there afterwards."""

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer

from .outputs import made_once, publish, staging_dir


def cache_root() -> Path:
    """`$HF_SMOE_CACHE`, else `~/.cache/hf_smoe`."""
    return Path(os.environ.get("HF_SMOE_CACHE", Path.home() / ".cache" / "hf_smoe"))


def converted_once(folder: Path, gguf_file: str, target: Path, auto_class: str) -> Path:
    """`target`, converted by `convert_gguf` unless it is already: one process at a time converts (a lock file beside
    the target), and one that waited finds the folder finished instead of converting it again."""
    return made_once(target, is_converted, lambda: convert_gguf(folder, gguf_file, target, auto_class))


def convert_gguf(folder: Path, gguf_file: str, target: Path, auto_class: str = "AutoModel") -> None:
    """De-quantizes a GGUF checkpoint into a safetensors folder of `auto_class` (a transformers Auto class name),
    built in a staging folder renamed into place when complete: an interrupted conversion leaves nothing that
    `is_converted` would take for finished, and the next one starts afresh."""
    import transformers

    model_class = getattr(transformers, auto_class)
    print(f"Converting {gguf_file} to safetensors (once) in {target}")
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        quantized = model_class.from_pretrained(folder, gguf_file=gguf_file)
        config = quantized.config.to_dict()
        config.pop("quantization_config", None)
        model = model_class.from_config(AutoConfig.for_model(**config))
        model.load_state_dict(quantized.state_dict(), strict=True)
        del quantized
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(staging)
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_converted(folder: Path) -> bool:
    """A folder `convert_gguf` finished (it only ever renames complete ones into place) and nothing damaged since:
    its config and tokenizer, and weights files that are whole. A folder cut short is converted again, never
    loaded."""
    if not ((folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()):
        return False
    weights = weights_files(folder)
    return bool(weights) and all(is_whole_safetensors(path) for path in weights)


def weights_files(folder: Path) -> list:
    """The safetensors files of a saved model: those its shard index names, else the one model.safetensors."""
    index = folder / "model.safetensors.index.json"
    try:
        names = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {"model.safetensors"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [folder / name for name in sorted(names)]


def is_whole_safetensors(path: Path) -> bool:
    """Whether `path` is a safetensors file whose header reads and whose data covers what the header lists."""
    try:
        with safe_open(str(path), "pt"):
            return True
    except (SafetensorError, OSError):
        return False
