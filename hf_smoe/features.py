"""The embedding cache: every unique (prompt, response) text goes through the frozen backbone once.

The backbone is frozen, so its representations are a pure function of (backbone weights, text, chat template, max
length, pooling, compute dtype). We compute them once, in length-bucketed batches, and store them as `datasets`
Arrow shards under a folder named by a fingerprint of exactly those inputs. Training, evaluation, steering,
adaptation and interpretation then run on cached features; an interrupted run keeps its finished shards and resumes.

Integrity: each shard folder holds a `checksums.json` manifest (sha256 of every file, written before the folder's
atomic rename); a shard whose files do not match it, or that has none, is reported once, deleted and re-embedded.
Resuming is bit-identical: texts are processed in a fixed order (longest first, ties by key), shards end at batch
boundaries, so the remaining texts form the same batches an uninterrupted run would have formed.
"""

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import datasets as datasets_progress  # its progress-bar switches
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from .data import PAIR_METADATA
from .distributed import state
from .encoding import as_messages, encode_pair
from .loading import cache_root, fast_dtype
from .modeling.configuration_smoe import InputError

FEATURE_COLUMNS = ("prompt_embedding", "chosen_embedding", "rejected_embedding")  # a pair's three vectors
CACHE_FORMAT_VERSION = 2  # 2: shards carry a checksum manifest; weights digest over every byte
MANIFEST = "checksums.json"
SHARD_NAME = re.compile(r"shard-(\d+)")
PARTIAL_NAME = re.compile(r"shard-\d+\.(\d+)\.partial")


def text_key(prompt, response: str) -> str:
    """Identity of one (prompt, response) text."""
    payload = json.dumps([as_messages(prompt), response], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of a module's state dict: its name, shape, dtype and every byte of its values, so any
    changed weight changes the digest (about 0.5 s for SmolLM2-135M's 538 MB on one CPU core)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def file_digest(path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def shard_damage(folder: Path) -> str | None:
    """Why a stored shard cannot be trusted (no or unreadable manifest, a missing, unreadable or changed file), or
    None when every file listed in its manifest is there with the recorded checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files or manifest.get("algorithm") != "sha256":
            raise ValueError(manifest)
    except FileNotFoundError:
        return "it has no checksum manifest"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "its checksum manifest is unreadable"
    for name, expected in sorted(files.items()):
        try:
            if file_digest(folder / name) != expected:
                return f"{name} does not match its checksum"
        except OSError:
            return f"{name} is missing or unreadable"
    return None


def feature_root(cache_dir=None) -> Path:
    """The embedding cache's root folder (default `$HF_SMOE_CACHE/features`); an InputError when it is, or lies
    inside, a file."""
    root = Path(cache_dir or cache_root() / "features")
    if any(folder.exists() and not folder.is_dir() for folder in (root, *root.parents)):
        raise InputError(f"cache_dir: {root} is or lies inside a file; give a folder for the embedding cache.")
    return root


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per batch. On CPU small batches stay in cache: for SmolLM2-135M on 2 cores, 1024 tokens ran
    556 tokens/s against 320 at 8192 (docs/benchmarks.md); a GPU wants large batches."""
    return 16384 if device.type == "cuda" else 1024


@contextlib.contextmanager
def quiet_datasets_progress():
    """Hides `datasets`' per-shard progress bars while the cache writes; our own bar reports the work."""
    was_disabled = datasets_progress.are_progress_bars_disabled()
    datasets_progress.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets_progress.enable_progress_bars()


class EmbeddingCache:
    """Prompt and response representations of a `SMoERewardModel`'s frozen backbone, computed once per text.

    Args:
        model: the `SMoERewardModel` whose backbone, pooling and prompt representation define the features.
        tokenizer: its tokenizer (chat template).
        cache_dir: root folder; defaults to `$HF_SMOE_CACHE/features` (`~/.cache/hf_smoe/features`).
        max_length: truncation length for chat-template(x) + y (see `encode_pair`).
        batch_tokens: padded tokens per batch (default: `default_batch_tokens(device)`); texts are sorted by length
            so batches carry little padding.
        shard_size: texts per stored shard: the most work an interruption can lose.
        dtype: the dtype the backbone computes in (default: `fast_dtype(device)`: bf16 weights where the hardware
            has native bf16). A backbone of another dtype is run through a converted copy (the caller's model, whose
            weights a checkpoint saves, is left as it is). Part of the fingerprint.
    """

    def __init__(self, model, tokenizer, *, cache_dir=None, max_length=1024, batch_tokens=None, shard_size=512,
                 show_progress=True, dtype=None):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.max_length, self.shard_size = max_length, shard_size
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.show_progress = show_progress
        self.dtype = dtype or fast_dtype(self.device)
        self._compute_model = None  # the model `_forward` runs: `model`, or one around a converted backbone
        self.directory = feature_root(cache_dir) / self.fingerprint()
        self._features = None  # (keys -> row, prompt (N, H), response (N, H)) once loaded
        self._verified = set()  # shard names whose checksums this instance checked (or which it wrote)

    def fingerprint(self) -> str:
        config = self.model.config
        payload = {
            "version": CACHE_FORMAT_VERSION,
            "backbone_config": config.backbone_config.to_dict() | {"_name_or_path": None},
            "backbone_weights": weights_digest(self.model.backbone),
            "chat_template": getattr(self.tokenizer, "chat_template", None),
            "tokenizer_vocab": len(self.tokenizer),
            "max_length": self.max_length,
            "pooling": config.pooling,
            "prompt_representation": config.prompt_representation,
            "dtype": str(self.dtype),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def embed(self, items) -> None:
        """Makes sure every (prompt, response) in `items` is cached, computing only the missing ones. Under several
        processes each embeds a disjoint share of the batches (batch i on process i mod N) into its own shards,
        and all wait for the others before reading: no text is embedded twice."""
        done = set(self._load()[0])
        todo = {}
        for prompt, response in items:
            key = text_key(prompt, response)
            if key not in done and key not in todo:
                todo[key] = (prompt, response)
        if not todo:
            return
        encodings = [(key, encode_pair(self.tokenizer, p, r, max_length=self.max_length)) for key, (p, r) in
                     todo.items()]
        # a fixed plan: longest first, ties by key, so a resumed run forms exactly the batches of an uninterrupted one
        encodings.sort(key=lambda item: (-len(item[1]["input_ids"]), item[0]))
        process = state()
        batches = list(self._length_buckets(encodings))[process.process_index::process.num_processes]
        progress = tqdm(total=sum(len(e["input_ids"]) for batch in batches for _, e in batch), unit="tok",
                        unit_scale=True, desc="Embedding",
                        disable=not self.show_progress or not process.is_local_main_process)
        shard = []
        for batch in batches:
            shard.extend(self._forward(batch))
            progress.update(sum(len(e["input_ids"]) for _, e in batch))
            if len(shard) >= self.shard_size:
                self._write_shard(shard)
                shard = []
        if shard:
            self._write_shard(shard)
        progress.close()
        process.wait_for_everyone()
        self._features = None

    def lookup(self, items):
        """(prompt embeddings, response embeddings) as float32 tensors (N, H), in the order of `items`."""
        self.embed(items)
        keys, prompts, responses = self._load()
        rows = torch.tensor([keys[text_key(p, r)] for p, r in items], dtype=torch.long)
        return prompts[rows], responses[rows]

    def pair_features(self, pairs) -> Dataset:
        """Per-pair features for a dataset in the common pair schema: `prompt_embedding` (from the chosen
        response's pass), `chosen_embedding`, `rejected_embedding`, plus the pair metadata columns it has."""
        chosen_items = list(zip(pairs["prompt"], pairs["chosen"]))
        rejected_items = list(zip(pairs["prompt"], pairs["rejected"]))
        self.embed(chosen_items + rejected_items)
        prompt, chosen = self.lookup(chosen_items)
        _, rejected = self.lookup(rejected_items)
        columns = {"prompt_embedding": prompt.numpy(), "chosen_embedding": chosen.numpy(),
                   "rejected_embedding": rejected.numpy()}
        columns.update({name: pairs[name] for name in PAIR_METADATA if name in pairs.column_names})
        return Dataset.from_dict(columns)

    def _length_buckets(self, encodings):
        """Consecutive runs of the length-sorted texts whose padded size stays within `batch_tokens`."""
        batch = []
        for item in encodings:
            longest = len((batch[0] if batch else item)[1]["input_ids"])
            if batch and (len(batch) + 1) * longest > self.batch_tokens:
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    @torch.inference_mode()
    def _forward(self, batch):
        self.tokenizer.padding_side = "right"
        inputs = self.tokenizer.pad([encoding for _, encoding in batch], return_tensors="pt").to(self.device)
        prompts, responses = self._computing_model().embed(**inputs)
        prompts, responses = prompts.float().cpu().numpy(), responses.float().cpu().numpy()
        return [(key, prompts[i], responses[i]) for i, (key, _) in enumerate(batch)]

    def _computing_model(self):
        """`self.model` when its backbone already computes in `self.dtype`; else, made once, the same model around a
        copy of the backbone converted to it (weights in bf16, not autocast over fp32 weights: faster on CPUs with
        native bf16)."""
        if self._compute_model is None:
            backbone = self.model.backbone
            if next(backbone.parameters()).dtype != self.dtype:
                backbone = copy.deepcopy(backbone).to(self.dtype)
                self._compute_model = type(self.model)(self.model.config, backbone=backbone).to(self.device).eval()
            else:
                self._compute_model = self.model
        return self._compute_model

    def _shards(self) -> list:
        """Finished shard folders, in index order (`.partial` folders are never read)."""
        if not self.directory.exists():
            return []
        found = [(int(m.group(1)), path) for path in self.directory.iterdir()
                 if (m := SHARD_NAME.fullmatch(path.name)) and path.is_dir()]
        return [path for _, path in sorted(found)]

    def _remove_stale_partials(self) -> None:
        """Deletes `.partial` folders left by a killed write: this process's own and those of processes no longer
        running (another live process may still be writing its own)."""
        if not self.directory.exists():
            return
        for path in self.directory.glob("*.partial"):
            match = PARTIAL_NAME.fullmatch(path.name)
            if match is None or int(match.group(1)) == os.getpid() or not _process_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)

    def _write_shard(self, rows) -> None:
        """Writes the shard and its checksum manifest to a `.partial` folder, then renames it to the next free
        `shard-NNNNN` name, so a shard on disk is always complete and a new one never takes an existing name."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shards = self._shards()
        # the next index this process may take: processes take indices in turn (i mod N), so they never collide
        process = state()
        index = int(SHARD_NAME.fullmatch(shards[-1].name).group(1)) + 1 if shards else 0
        index += (process.process_index - index) % process.num_processes
        partial = self.directory / f"shard-{index:05d}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with quiet_datasets_progress():
            Dataset.from_dict({"key": [r[0] for r in rows], "prompt_embedding": np.stack([r[1] for r in rows]),
                               "response_embedding": np.stack([r[2] for r in rows])}).save_to_disk(partial)
        files = {path.name: file_digest(path) for path in sorted(partial.iterdir()) if path.is_file()}
        (partial / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT_VERSION, "algorithm": "sha256",
                                                    "rows": len(rows), "files": files}, indent=1))
        while True:
            target = self.directory / f"shard-{index:05d}"
            if not target.exists():
                try:
                    partial.rename(target)
                    break
                except OSError:
                    if not target.exists():
                        raise
            index += process.num_processes  # another job's process took this name meanwhile
        self._verified.add(target.name)

    def _load_shard(self, folder: Path):
        """The shard's table, or (None, why) when it is damaged."""
        if folder.name not in self._verified:
            damage = shard_damage(folder)
            if damage is not None:
                return None, damage
        try:
            with quiet_datasets_progress():
                table = load_from_disk(str(folder))
            rows = json.loads((folder / MANIFEST).read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"it does not load ({type(error).__name__})"
        if len(table) != rows or set(table.column_names) != {"key", "prompt_embedding", "response_embedding"}:
            return None, "its rows do not match its manifest"
        self._verified.add(folder.name)
        return table, None

    def _load(self):
        if self._features is None:
            self._remove_stale_partials()
            tables, damaged = [], []
            for folder in self._shards():
                table, damage = self._load_shard(folder)
                if table is None:
                    damaged.append((folder, damage))
                else:
                    tables.append(table)
            if damaged:
                self._discard(damaged)
            if not tables:
                hidden = self.model.config.hidden_size
                self._features = ({}, torch.empty(0, hidden), torch.empty(0, hidden))
            else:
                table = concatenate_datasets(tables).with_format("numpy")
                self._features = ({key: row for row, key in enumerate(table["key"])},
                                  torch.from_numpy(np.asarray(table["prompt_embedding"], dtype=np.float32)),
                                  torch.from_numpy(np.asarray(table["response_embedding"], dtype=np.float32)))
        return self._features

    def _discard(self, damaged) -> None:
        """One warning naming the damaged shards a load found; they are deleted, so `embed` (which computes whatever
        is missing) re-embeds their texts."""
        described = "; ".join(f"{folder.name} ({why})" for folder, why in damaged[:5])
        if len(damaged) > 5:
            described += f"; and {len(damaged) - 5} more"
        warnings.warn(f"feature cache {self.directory}: damaged shard(s) {described}; deleted, their texts will be "
                      f"re-embedded.", stacklevel=2)
        for folder, _ in damaged:
            self._verified.discard(folder.name)
            shutil.rmtree(folder, ignore_errors=True)


def as_training_features(features):
    """The pair-feature columns the trainer reads, as torch tensors."""
    missing = [name for name in FEATURE_COLUMNS if name not in features.column_names]
    if missing:
        raise InputError(f"train_dataset: missing feature columns {missing}; build it with "
                         "EmbeddingCache.pair_features.")
    return features.select_columns(list(FEATURE_COLUMNS)).with_format("torch")


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, harmless liveness probe; leave the folder (it is never read)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
