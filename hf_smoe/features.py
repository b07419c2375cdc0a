"""The embedding cache: every unique (prompt, response) text goes through the frozen backbone once.

The backbone is frozen, so its representations are a pure function of (backbone weights, text, chat template, max
length, pooling, compute dtype). We compute them once, in length-bucketed batches, and store them as `datasets`
Arrow shards under a folder named by a fingerprint of exactly those inputs. Training, evaluation, steering,
adaptation and interpretation then run on cached features; an interrupted run keeps its finished shards and resumes.

Memory does not grow with the data: shards are memory-mapped, the key -> row index holds keys and row numbers only,
and `pair_features` writes each split's (prompt, chosen, rejected) vectors to its own memory-mapped Arrow file in
batches, which every consumer reads in batches. Vectors are stored in float16 when the backbone computes in a 16-bit
dtype (bf16's 8 significant bits fit float16's 11, so within float16's range, checked on write, nothing is lost)
and in float32 otherwise: the stored features always equal what the backbone computed.

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
import pyarrow as pa
import torch
import datasets as datasets_progress  # its progress-bar switches
from datasets import Dataset, Features, List, Value, load_from_disk
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from .data import PAIR_METADATA
from .distributed import state
from .encoding import as_messages, encode_pair
from .loading import cache_root, fast_dtype
from .modeling.configuration_smoe import InputError

FEATURE_COLUMNS = ("prompt_embedding", "chosen_embedding", "rejected_embedding")  # a pair's three vectors
CACHE_FORMAT_VERSION = 3  # 3: fixed-size vectors in the storage dtype; pair files; 2: checksum manifests
MANIFEST = "checksums.json"
SHARD_NAME = re.compile(r"shard-(\d+)")
PARTIAL_NAME = re.compile(r".+\.(\d+)\.partial")
PAIR_BATCH = 2048  # pairs gathered and written at a time by `pair_features`
FLOAT16_MAX = float(np.finfo(np.float16).max)


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
        while chunk := handle.read(1 << 20):
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


def storage_dtype(compute_dtype: torch.dtype) -> np.dtype:
    """How vectors computed in `compute_dtype` are stored: float16 for a 16-bit dtype (exact for bf16 and fp16
    within float16's range, which `FeatureStore.write_shard` checks), float32 otherwise (exact)."""
    return np.dtype(np.float16) if torch.finfo(compute_dtype).bits == 16 else np.dtype(np.float32)


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """An (N, H) array as an Arrow column of fixed-size vectors (zero-copy)."""
    vectors = np.ascontiguousarray(vectors)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def sequence_column(sequences: list) -> pa.ListArray:
    """N arrays of shape (T_i, H) as an Arrow column of variable-length lists of fixed-size vectors."""
    offsets = np.concatenate([[0], np.cumsum([len(sequence) for sequence in sequences])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), vector_column(np.concatenate(sequences)))


def column_vectors(column) -> np.ndarray:
    """An Arrow column of fixed-size vectors as an (N, H) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def column_sequences(column) -> list:
    """An Arrow column of lists of fixed-size vectors as a list of (T_i, H) arrays."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    return np.split(column_vectors(column.flatten()), np.cumsum(lengths)[:-1])


def write_manifest(folder: Path, rows: int) -> None:
    """The checksum manifest `shard_damage` verifies: sha256 of every file in `folder` and its row count."""
    files = {path.name: file_digest(path) for path in sorted(folder.iterdir()) if path.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT_VERSION, "algorithm": "sha256",
                                               "rows": rows, "files": files}, indent=1))


def manifest_rows(folder: Path) -> int:
    return json.loads((folder / MANIFEST).read_text())["rows"]


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


EMBEDDING_COLUMNS = {"prompt_embedding": "vector", "response_embedding": "vector"}  # the embedding cache's


class FeatureStore:
    """Stored text features of one fingerprint: shards of a key and named columns, memory-mapped. A column holds
    one vector (H,) per text (`"vector"`) or one (T, H) sequence of them (`"sequence"`).

    The index keeps only the sorted keys (64 bytes each) and their row numbers; values are read when asked for.
    """

    def __init__(self, directory, hidden_size: int, dtype: np.dtype, columns: dict = EMBEDDING_COLUMNS):
        self.directory, self.hidden_size, self.dtype = Path(directory), hidden_size, np.dtype(dtype)
        self.columns = dict(columns)
        self._verified = set()  # folder names whose checksums this instance checked (or which it wrote)
        self._opened = None  # (sorted keys, their rows, shard tables, first row of each shard) once opened

    def __len__(self):
        return len(self._open()[0])

    def shards(self) -> list:
        """Finished shard folders, in index order (`.partial` folders are never read)."""
        if not self.directory.exists():
            return []
        found = [(int(m.group(1)), path) for path in self.directory.iterdir()
                 if (m := SHARD_NAME.fullmatch(path.name)) and path.is_dir()]
        return [path for _, path in sorted(found)]

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Global row of each key (an array of 64-byte hex keys), -1 where it is not stored."""
        sorted_keys, rows, _, _ = self._open()
        if len(sorted_keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[position] == keys, rows[position], -1)

    def read(self, rows: np.ndarray) -> dict:
        """Each column's values at `rows`, in the storage dtype: an (N, H) array for a vector column, a list of N
        (T_i, H) arrays for a sequence column. Rows are gathered shard by shard (never a concatenation of all)."""
        _, _, tables, starts = self._open()
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        parts, order = [], []
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            parts.append(tables[shard].take(pa.array(rows[where] - starts[shard])))
            order.append(where)
        order = np.concatenate(order) if order else np.empty(0, dtype=np.int64)
        position = np.empty(len(rows), dtype=np.int64)  # where each requested row sits among the gathered ones
        position[order] = np.arange(len(rows))
        values = {}
        for name, kind in self.columns.items():
            if kind == "vector":
                gathered = [column_vectors(part.column(name)) for part in parts]
                values[name] = (np.concatenate(gathered) if gathered else
                                np.empty((0, self.hidden_size), dtype=self.dtype))[position]
            else:
                gathered = [sequence for part in parts for sequence in column_sequences(part.column(name))]
                values[name] = [gathered[i] for i in position]
        return values

    def write_shard(self, keys, **values) -> None:
        """Writes the shard (`values`: each column's (N, H) array or list of N (T_i, H) arrays) and its checksum
        manifest to a `.partial` folder, then renames it to the next free `shard-NNNNN` name, so a shard on disk is
        always complete and a new one never takes an existing name."""
        arrays = {name: values[name] if kind == "vector" else np.concatenate(values[name])
                  for name, kind in self.columns.items()}
        largest = max(float(np.abs(array.astype(np.float32)).max(initial=0)) for array in arrays.values())
        if self.dtype == np.float16 and largest > FLOAT16_MAX:
            raise InputError(f"the backbone's features reach {largest:.4g}, beyond float16's range "
                             f"({FLOAT16_MAX:g}), in which 16-bit computations are stored; set HF_SMOE_DTYPE=float32 "
                             "to compute and store them in float32.")
        self.directory.mkdir(parents=True, exist_ok=True)
        shards = self.shards()
        # the next index this process may take: processes take indices in turn (i mod N), so they never collide
        process = state()
        index = int(SHARD_NAME.fullmatch(shards[-1].name).group(1)) + 1 if shards else 0
        index += (process.process_index - index) % process.num_processes
        partial = self.directory / f"shard-{index:05d}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        columns = {"key": pa.array(np.asarray(keys).astype(str).tolist(), pa.string())}
        for name, kind in self.columns.items():
            columns[name] = (vector_column(values[name].astype(self.dtype, copy=False)) if kind == "vector" else
                             sequence_column([value.astype(self.dtype, copy=False) for value in values[name]]))
        table = pa.table(columns)
        with quiet_datasets_progress():
            Dataset(InMemoryTable(table)).save_to_disk(partial)
        write_manifest(partial, len(table))
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
        self._opened = None

    def pair_features(self, pairs, chosen_keys: np.ndarray, rejected_keys: np.ndarray) -> Dataset:
        """A memory-mapped Dataset of the pairs' `prompt_embedding` (from the chosen response's pass),
        `chosen_embedding` and `rejected_embedding`, plus the pair metadata columns `pairs` has (a store of
        `EMBEDDING_COLUMNS`). Written once per distinct (pairs, metadata) under `pairs/` of the store, `PAIR_BATCH`
        pairs at a time, and reused."""
        metadata = [name for name in PAIR_METADATA if name in pairs.column_names]
        digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}{self.dtype}{metadata}".encode())
        digest.update(chosen_keys.tobytes())
        digest.update(rejected_keys.tobytes())
        for batch in pairs.select_columns(metadata).iter(batch_size=PAIR_BATCH):
            digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
        folder = self.directory / "pairs" / digest.hexdigest()[:32]
        if folder.exists() and self._readable(folder, len(pairs)):
            return Dataset.from_file(str(folder / "data.arrow"))
        shutil.rmtree(folder, ignore_errors=True)
        self._open()  # before the partial exists: opening clears this process's stale partials
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        vector = List(Value(str(self.dtype)), length=self.hidden_size)
        features = Features({name: vector for name in FEATURE_COLUMNS} | {name: pairs.features[name]
                                                                          for name in metadata})
        writer = ArrowWriter(features=features, path=str(partial / "data.arrow"))
        arrow_metadata = pairs.select_columns(metadata).with_format("arrow")
        for start in range(0, len(pairs), PAIR_BATCH):
            stop = min(start + PAIR_BATCH, len(pairs))
            rows = self.rows(np.concatenate([chosen_keys[start:stop], rejected_keys[start:stop]]))
            if (rows < 0).any():
                raise RuntimeError("pair_features: a text of the pairs is not stored; embed the pairs first.")
            stored = self.read(rows)
            prompts, responses = stored["prompt_embedding"], stored["response_embedding"]
            columns = {"prompt_embedding": vector_column(prompts[:stop - start]),
                       "chosen_embedding": vector_column(responses[:stop - start]),
                       "rejected_embedding": vector_column(responses[stop - start:])}
            table = arrow_metadata[start:stop]
            columns.update({name: table.column(name) for name in metadata})
            writer.write_table(pa.table(columns))
        writer.finalize()
        write_manifest(partial, len(pairs))
        try:
            partial.rename(folder)
        except OSError:
            if not folder.exists():  # another process finished the same file first: use it
                raise
            shutil.rmtree(partial, ignore_errors=True)
        self._verified.add(folder.name)
        return Dataset.from_file(str(folder / "data.arrow"))

    def remove_stale_partials(self) -> None:
        """Deletes `.partial` folders left by a killed write: this process's own and those of processes no longer
        running (another live process may still be writing its own)."""
        for path in (*self.directory.glob("*.partial"), *self.directory.glob("pairs/*.partial")):
            match = PARTIAL_NAME.fullmatch(path.name)
            if match is None or int(match.group(1)) == os.getpid() or not _process_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)

    def refresh(self) -> None:
        """Forgets the opened index, so the next read sees shards written since (by any process)."""
        self._opened = None

    def _readable(self, folder: Path, rows: int) -> bool:
        """Whether a stored pair file is intact and has `rows` rows; a damaged one is reported and rewritten."""
        damage = None if folder.name in self._verified else shard_damage(folder)
        if damage is None and manifest_rows(folder) == rows:
            self._verified.add(folder.name)
            return True
        warnings.warn(f"feature cache {folder}: damaged pair file ({damage or 'wrong row count'}); rewritten.",
                      stacklevel=3)
        return False

    def _load_shard(self, folder: Path):
        """The shard's memory-mapped table, or (None, why) when it is damaged."""
        if folder.name not in self._verified:
            damage = shard_damage(folder)
            if damage is not None:
                return None, damage
        try:
            with quiet_datasets_progress():
                table = load_from_disk(str(folder)).data.table
            rows = manifest_rows(folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return None, f"it does not load ({type(error).__name__})"
        if len(table) != rows or table.column_names != ["key", *self.columns]:
            return None, "its rows do not match its manifest"
        self._verified.add(folder.name)
        return table, None

    def _open(self):
        """(sorted keys, their rows, shard tables, first row of each shard): only the keys are read into memory."""
        if self._opened is None:
            self.remove_stale_partials()
            tables, damaged = [], []
            for folder in self.shards():
                table, damage = self._load_shard(folder)
                if table is None:
                    damaged.append((folder, damage))
                else:
                    tables.append(table)
            if damaged:
                self._discard(damaged)
            keys = [table.column("key").to_numpy(zero_copy_only=False).astype("S64") for table in tables]
            keys = np.concatenate(keys) if keys else np.empty(0, dtype="S64")
            order = np.argsort(keys, kind="stable")
            starts = np.cumsum([0] + [len(table) for table in tables])[:-1]
            self._opened = (keys[order], order.astype(np.int64), tables, starts)
        return self._opened

    def _discard(self, damaged) -> None:
        """One warning naming the damaged shards a read found; they are deleted, so `EmbeddingCache.embed` (which
        computes whatever is missing) re-embeds their texts."""
        described = "; ".join(f"{folder.name} ({why})" for folder, why in damaged[:5])
        if len(damaged) > 5:
            described += f"; and {len(damaged) - 5} more"
        warnings.warn(f"feature cache {self.directory}: damaged shard(s) {described}; deleted, their texts will be "
                      f"re-embedded.", stacklevel=2)
        for folder, _ in damaged:
            self._verified.discard(folder.name)
            shutil.rmtree(folder, ignore_errors=True)


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
        only the missing ones; returns their keys. The plan holds each missing text's position, key and length;
        a batch is tokenized again when its turn comes, so memory does not grow with the tokens. Under several
        processes each embeds a disjoint share of the batches (batch i on process i mod N) into its own shards,
        and all wait for the others before reading: no text is embedded twice."""
        keys = np.array([text_key(prompt, response) for prompt, response in items], dtype="S64")
        missing = np.flatnonzero(self.store.rows(keys) < 0)
        if len(missing) == 0:
            return keys
        _, first = np.unique(keys[missing], return_index=True)
        positions = missing[first]
        lengths = np.array([len(self.encode(items[i])["input_ids"]) for i in positions])
        # a fixed plan: longest first, ties by key, so a resumed run forms exactly the batches of an uninterrupted one
        order = np.lexsort((keys[positions], -lengths))
        positions, lengths = positions[order], lengths[order]
        process = state()
        batches = list(self._length_buckets(lengths))[process.process_index::process.num_processes]
        progress = tqdm(total=int(sum(lengths[batch].sum() for batch in batches)), unit="tok", unit_scale=True,
                        desc="Embedding", disable=not self.show_progress or not process.is_local_main_process)
        shard = []
        for batch in batches:
            shard.extend(self._forward([(keys[i], self.encode(items[i])) for i in positions[batch]]))
            progress.update(int(lengths[batch].sum()))
            if len(shard) >= self.shard_size:
                self._write(shard)
                shard = []
        if shard:
            self._write(shard)
        progress.close()
        process.wait_for_everyone()
        self.store.refresh()
        return keys

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


def in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` when its weights are already `dtype`; else a converted copy (weights in bf16, not autocast over fp32
    weights: faster on CPUs with native bf16). The caller's module, which a checkpoint may save, is left as it is."""
    if next(module.parameters()).dtype == dtype:
        return module
    return copy.deepcopy(module).to(dtype)


class EmbeddingCache(TextCache):
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
            has native bf16), through `in_dtype`. It sets the storage dtype (`storage_dtype`); both are in the
            fingerprint.
    """

    columns = EMBEDDING_COLUMNS

    def __init__(self, model, tokenizer, **options):
        self.model = model
        self._compute_model = None  # the model `_forward` runs: `model`, or one around a converted backbone
        super().__init__(tokenizer, next(model.parameters()).device, model.config.hidden_size, **options)

    def fingerprint(self) -> str:
        config = self.model.config
        return self._fingerprint_of({
            "backbone_config": config.backbone_config.to_dict() | {"_name_or_path": None},
            "backbone_weights": weights_digest(self.model.backbone),
            "pooling": config.pooling,
            "prompt_representation": config.prompt_representation,
        })

    def lookup(self, items):
        """(prompt embeddings, response embeddings) as float32 tensors (N, H), in the order of `items`."""
        stored = self.store.read(self.store.rows(self.embed(items)))
        return tuple(torch.from_numpy(stored[name].astype(np.float32)) for name in self.columns)

    def pair_features(self, pairs) -> Dataset:
        """Per-pair features for a dataset in the common pair schema, memory-mapped (`FeatureStore.pair_features`):
        `prompt_embedding` (from the chosen response's pass), `chosen_embedding`, `rejected_embedding`, plus the
        pair metadata columns it has. Read them with `as_training_features`."""
        keys = self.embed(PairTexts(pairs))
        return self.store.pair_features(pairs, keys[:len(pairs)], keys[len(pairs):])

    @torch.inference_mode()
    def _forward(self, batch):
        prompts, responses = self._computing_model().embed(**self._padded([encoding for _, encoding in batch]))
        prompts, responses = prompts.float().cpu().numpy(), responses.float().cpu().numpy()
        return [(key, {"prompt_embedding": prompts[i], "response_embedding": responses[i]})
                for i, (key, _) in enumerate(batch)]

    def _computing_model(self):
        """`self.model`, or (made once) the same model around its backbone converted to `self.dtype`."""
        if self._compute_model is None:
            backbone = in_dtype(self.model.backbone, self.dtype)
            self._compute_model = self.model if backbone is self.model.backbone else type(self.model)(
                self.model.config, backbone=backbone).to(self.device).eval()
        return self._compute_model


class HiddenStateCache(TextCache):
    """The hidden states entering layer `layer` of a decoder backbone, one (T, H) sequence per text, for tuning
    the layers above (`hf_smoe.backbone_tuning`): `bottom` is the backbone's lower part (`split_layers`), whose
    weights (every byte), the layer index and the encoding settings make the fingerprint. Texts are encoded as
    the embedding cache encodes them; shards are smaller (64 texts), since each text stores T vectors."""

    columns = {"states": "sequence"}

    def __init__(self, bottom, tokenizer, layer: int, *, shard_size=64, **options):
        self.bottom, self.layer = bottom, layer
        self._compute_bottom = None
        super().__init__(tokenizer, next(bottom.parameters()).device, bottom.config.hidden_size,
                         shard_size=shard_size, **options)

    def fingerprint(self) -> str:
        return self._fingerprint_of({"kind": "hidden_states", "layer": self.layer,
                                     "backbone_config": self.bottom.config.to_dict() | {"_name_or_path": None},
                                     "lower_layers_weights": weights_digest(self.bottom)})

    def states(self, keys: np.ndarray) -> list:
        """The stored (T, H) states of each key (64-character hex, see `text_key`), as float32 tensors."""
        rows = self.store.rows(keys)
        if (rows < 0).any():
            raise RuntimeError("HiddenStateCache.states: a text is not cached; embed it first.")
        return [torch.from_numpy(value.astype(np.float32)) for value in self.store.read(rows)["states"]]

    @torch.inference_mode()
    def compute(self, encodings: list) -> list:
        """The states of encoded texts, computed now (float32 arrays, one (T_i, H) per text)."""
        if self._compute_bottom is None:
            self._compute_bottom = in_dtype(self.bottom, self.dtype)
        inputs = self._padded([{"input_ids": encoding["input_ids"]} for encoding in encodings])
        hidden = self._compute_bottom(**inputs, use_cache=False).last_hidden_state.float().cpu().numpy()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, :length] for i, length in enumerate(lengths)]

    def _forward(self, batch):
        states = self.compute([encoding for _, encoding in batch])
        return [(key, {"states": value}) for (key, _), value in zip(batch, states)]


def as_training_features(features):
    """The pair-feature columns the trainer and evaluation read, as float32 torch tensors whatever the storage
    dtype, converted batch by batch as they are read."""
    missing = [name for name in FEATURE_COLUMNS if name not in features.column_names]
    if missing:
        raise InputError(f"train_dataset: missing feature columns {missing}; build it with "
                         "EmbeddingCache.pair_features.")
    return features.select_columns(list(FEATURE_COLUMNS)).with_format("torch", dtype=torch.float32)


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
