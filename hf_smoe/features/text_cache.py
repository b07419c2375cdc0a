"""What every feature cache shares: each unique (prompt, response) text goes through a frozen model once.

The model is frozen, so its features of a text are a pure function of (weights, text, chat template, max length,
compute dtype, and what the cache computes). A `TextCache` computes them once, in length-bucketed batches, and keeps
them in a `FeatureStore` under a folder named by a fingerprint of exactly those inputs; an interrupted run keeps its
finished shards and resumes. Resuming is bit-identical: texts are processed in a fixed order (longest first, ties by
key), shards end at batch boundaries, so the remaining texts form the same batches an uninterrupted run would have
formed.
"""

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from filelock import FileLock
from tqdm.auto import tqdm

from ..errors import InputError
from ..runtime import cache_root, fast_dtype, state
from .encoding import encode_pair
from .store import CACHE_FORMAT_VERSION, PAIR_BATCH, FeatureStore, storage_dtype, text_key


def feature_root(cache_dir=None) -> Path:
    """The embedding cache's root folder (default `$HF_SMOE_CACHE/features`); an InputError when it is, or lies
    inside, a file."""
    root = Path(cache_dir or cache_root() / "features")
    if any(folder.exists() and not folder.is_dir() for folder in (root, *root.parents)):
        raise InputError(f"cache_dir: {root} is or lies inside a file; give a folder for the embedding cache.")
    return root


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per batch. On CPU small batches stay in cache: for SmolLM2-135M, 1024 tokens ran 556 tokens/s
    against 320 at 8192 (docs/benchmarks.md); a GPU wants large batches."""
    return 16384 if device.type == "cuda" else 1024


def in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` when its weights are already `dtype`; else a converted copy (weights in bf16, not autocast over fp32
    weights: faster on CPUs with native bf16). The caller's module, which a checkpoint may save, is left as it is."""
    if next(module.parameters()).dtype == dtype:
        return module
    return copy.deepcopy(module).to(dtype)


class PairTexts:
    """The 2N texts of N pairs, chosen sides then rejected sides, read from the pairs' table on demand (a long
    dataset is never turned into Python lists)."""

    def __init__(self, pairs):
        self.pairs = pairs.select_columns(["prompt", "chosen", "rejected"])

    def __len__(self):
        return 2 * len(self.pairs)

    def __getitem__(self, index):
        row = self.pairs[int(index) % len(self.pairs)]
        return row["prompt"], row["chosen" if index < len(self.pairs) else "rejected"]

    def __iter__(self):
        for side in ("chosen", "rejected"):
            for batch in self.pairs.iter(batch_size=PAIR_BATCH):
                yield from zip(batch["prompt"], batch[side])


class TextCache:
    """What every feature cache shares: features of each unique (prompt, response) text computed once, in
    length-bucketed batches, written in checksummed shards under a fingerprint of everything they depend on, and
    resumed after an interruption. Subclasses say what is computed (`_forward`) and what defines it
    (`fingerprint`)."""

    columns: dict  # the stored columns (`FeatureStore`)

    def __init__(self, tokenizer, device, hidden_size: int, *, cache_dir=None, max_length=1024, batch_tokens=None,
                 shard_size=512, show_progress=True, dtype=None):
        self.tokenizer, self.device = tokenizer, device
        self.max_length, self.shard_size = max_length, shard_size
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.show_progress = show_progress
        self.dtype = dtype or fast_dtype(self.device)
        self.directory = feature_root(cache_dir) / self.fingerprint()
        self.store = FeatureStore(self.directory, hidden_size, storage_dtype(self.dtype), self.columns)

    def fingerprint(self) -> str:
        raise NotImplementedError

    def _fingerprint_of(self, payload: dict) -> str:
        """The folder name: a digest of `payload` plus what every cache depends on."""
        payload = payload | {"version": CACHE_FORMAT_VERSION, "chat_template": getattr(self.tokenizer, "chat_template",
                                                                                         None),
                             "tokenizer_vocab": len(self.tokenizer), "max_length": self.max_length,
                             "dtype": str(self.dtype), "storage": str(storage_dtype(self.dtype))}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def embed(self, items) -> np.ndarray:
        """Makes sure every (prompt, response) in `items` (a sequence: a list, or `PairTexts`) is cached, computing
        only the missing ones; returns their keys. Two jobs filling one cache folder at once take turns (a lock
        file beside it): the second waits, then embeds only what the first left missing, so each text is stored
        once. Under several processes of one job the main process decides what is missing (a process that looked
        itself could see shards another had already written, plan other batches, and leave texts unembedded) and
        holds the turn, each embeds a disjoint share of the batches (batch i on process i mod N) into its own
        shards, and all wait for the others before reading: every text is embedded once."""
        keys = np.array([text_key(prompt, response) for prompt, response in items], dtype="S64")
        if len(self._missing(keys)) == 0:
            return keys
        with self._writing_turn():
            self.store.refresh()  # what another job wrote while this one waited for its turn
            missing = self._missing(keys)
            if len(missing):
                self._embed_missing(items, keys, missing)
        return keys

    def _missing(self, keys: np.ndarray) -> np.ndarray:
        """Positions of the `keys` not stored, as the main process sees them (every process gets its answer)."""
        process = state()
        missing = np.flatnonzero(self.store.rows(keys) < 0) if process.is_main_process else None
        if process.num_processes > 1:
            missing = broadcast_object_list([missing])[0]
            self.store.refresh()  # read what the main process saw, and what is written from here on
        return missing

    @contextlib.contextmanager
    def _writing_turn(self):
        """This job's turn to write shards into the cache folder: the main process holds a lock file beside the
        folder (released by the system if the process dies) while the job's processes embed."""
        if not state().is_main_process:
            yield
            return
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory.with_name(f".{self.directory.name}.lock")):
            yield

    def _embed_missing(self, items, keys: np.ndarray, missing: np.ndarray) -> None:
        """Embeds the texts at positions `missing` (each distinct one once) in a fixed plan of length buckets and
        writes them in shards. The plan holds each text's position, key and length; a batch is tokenized again when
        its turn comes, so memory does not grow with the tokens."""
        process = state()
        _, first = np.unique(keys[missing], return_index=True)
        positions = missing[first]
        lengths = np.array([len(self.encode(items[i])["input_ids"]) for i in positions])
        # a fixed plan: longest first, ties by key, so a resumed run forms exactly the batches of an uninterrupted one
        order = np.lexsort((keys[positions], -lengths))
        positions, lengths = positions[order], lengths[order]
        batches = list(self._length_buckets(lengths))[process.process_index::process.num_processes]
        # closed however the loop ends, so an error's one line starts a line of its own
        with tqdm(total=int(sum(lengths[batch].sum() for batch in batches)), unit="tok", unit_scale=True,
                  desc="Embedding", disable=not self.show_progress or not process.is_local_main_process) as progress:
            shard = []
            for batch in batches:
                shard.extend(self._forward([(keys[i], self.encode(items[i])) for i in positions[batch]]))
                progress.update(int(lengths[batch].sum()))
                if len(shard) >= self.shard_size:
                    self._write(shard)
                    shard = []
            if shard:
                self._write(shard)
        process.wait_for_everyone()
        self.store.refresh()

    def encode(self, item) -> dict:
        """The token ids of one (prompt, response) text, as the cache encodes it (`encode_pair`)."""
        return encode_pair(self.tokenizer, *item, max_length=self.max_length)

    def _padded(self, encodings: list) -> dict:
        """A right-padded batch on the device (from page-locked memory on CUDA: the copy needs no staging buffer)."""
        self.tokenizer.padding_side = "right"
        inputs = self.tokenizer.pad(encodings, return_tensors="pt")
        if self.device.type == "cuda":
            return {name: tensor.pin_memory().to(self.device, non_blocking=True) for name, tensor in inputs.items()}
        return dict(inputs.to(self.device))

    def _length_buckets(self, lengths):
        """Index ranges of consecutive length-sorted texts whose padded size stays within `batch_tokens`."""
        start = 0
        for end in range(1, len(lengths) + 1):
            if end == len(lengths) or (end - start + 1) * lengths[start] > self.batch_tokens:
                yield np.arange(start, end)
                start = end

    def _forward(self, batch) -> list:
        """[(key, {column: value})] of a batch of (key, encoding)."""
        raise NotImplementedError

    def _write(self, rows) -> None:
        values = {name: [row[1][name] for row in rows] for name in self.columns}
        self.store.write_shard([key for key, _ in rows], **{
            name: np.stack(value) if self.columns[name] == "vector" else value for name, value in values.items()})
