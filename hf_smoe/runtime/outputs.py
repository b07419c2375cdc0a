"""Where results go: outputs checked before any work, replaced only when asked, and written atomically.

Every folder a command fills is built in a staging folder beside it (`.NAME.partial`) and renamed into place when
complete, so a killed or failed run never leaves new weights beside old results. An existing output is replaced only
with `overwrite=True` (`--overwrite`), and only if hf_smoe wrote it: a folder of someone else's files, or a folder a
run reads from (the backbone, the data, the checkpoint), is never deleted. Single files are written to a temporary
name and renamed (`write_text_atomic`).
"""

import hashlib
import json
import os
import platform
import shutil
import sys
import threading
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
from filelock import FileLock

from ..modeling.configuration_smoe import SMoERewardConfig
from ..errors import InputError

RUN_RECORD = "results.json"  # what `save_run` writes last into every folder a command fills


def is_hf_smoe_output(folder: Path) -> bool:
    """A folder hf_smoe wrote: a checkpoint or a run record (a tuned backbone has one)."""
    return (folder / RUN_RECORD).is_file() or is_reward_model(folder)


def is_reward_model(folder: Path) -> bool:
    """A checkpoint of ours: config.json of our model_type."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == SMoERewardConfig.model_type
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(path, *, overwrite: bool = False, protected: dict | None = None,
                     flag: str = "--output-dir") -> Path:
    """`path` as a Path, once it is known to be writable as a whole: not a file, not a folder the run reads
    (`protected`: {what it is: path}) nor one holding it, and either new, empty, or (with `overwrite`) an earlier
    hf_smoe output. Checked before any data or model loads; `~` is expanded."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag}: {path} is a file; give a folder path.")
    resolved = path.resolve()
    for what, other in (protected or {}).items():
        other = Path(other).resolve()
        if resolved == other or resolved in other.parents:
            raise InputError(f"{flag}: {path} is or holds the {what} ({other}), which writing there would destroy; "
                             f"choose another {flag}.")
    if path.is_dir() and any(path.iterdir()):
        if not is_hf_smoe_output(path):
            raise InputError(f"{flag}: {path} holds files hf_smoe did not write; choose a new or empty folder "
                             "(--overwrite replaces only an earlier hf_smoe output).")
        if not overwrite:
            raise InputError(f"{flag}: {path} already holds an hf_smoe output; pass --overwrite to replace it, or "
                             f"choose another {flag}.")
    return path


def check_output_file(path, suffix: str, *, overwrite: bool = False, ours=None, protected: dict | None = None,
                      flag: str = "--output") -> Path:
    """`path` as a Path, once it can be written: ends with `suffix`, is not a folder, is none of the `protected`
    files ({what it is: path}), and is new or (with `overwrite`) a file `ours(path)` recognizes as hf_smoe's; `~` is
    expanded."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{flag}: {path} is a folder; give a {suffix} file path.")
    if not path.name.endswith(suffix):
        raise InputError(f"{flag}: {path} must be a {suffix} file.")
    for what, other in (protected or {}).items():
        if path.resolve() == Path(other).resolve():
            raise InputError(f"{flag}: {path} is the {what}, which writing there would destroy; choose another "
                             f"{flag}.")
    if path.exists():
        if ours is not None and not ours(path):
            raise InputError(f"{flag}: {path} exists and hf_smoe did not write it; choose another {flag}.")
        if not overwrite:
            raise InputError(f"{flag}: {path} exists; pass --overwrite to replace it, or choose another {flag}.")
    return path


def file_digest(path) -> str:
    """sha256 of a file's bytes, read 1 MiB at a time: checking a cache shard or a GGUF file of gigabytes takes little
    memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def staging_dir(path: Path) -> Path:
    """The folder an output is built in before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def made_once(path: Path, is_made, make) -> Path:
    """`path`, made by `make()` unless `is_made(path)` holds already: one process at a time makes it (a lock file
    beside it), and one that waited finds it made instead of making it again."""
    if not is_made(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(f".{path.name}.lock")):
            if not is_made(path):
                make()
    return path


def publish(staging: Path, path: Path) -> None:
    """Moves a complete staging folder into place, replacing `path` (moved aside first, removed last)."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path, text: str) -> Path:
    """Writes `text` to `path` through a temporary file and a rename: a reader sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def run_command() -> str:
    """The command line that started this process, as the user typed it (`smoe ...` for the console script)."""
    program = "smoe" if Path(sys.argv[0]).name == "smoe" else sys.argv[0]
    return " ".join([program, *sys.argv[1:]])


def save_run(output_dir: Path, job, results, filename: str = "results.json") -> None:
    """The exact command, the job and the environment beside the results (`output_dir/filename`)."""
    record = {"command": run_command(), "job": job if isinstance(job, dict) else asdict(job),
              "versions": {"hf_smoe": version("hf-smoe"), "transformers": transformers.__version__,
                           "torch": torch.__version__, "python": platform.python_version()},
              "results": results}
    write_text_atomic(output_dir / filename, json.dumps(record, indent=2, default=str))
