"""The feature store: text features kept as `datasets` Arrow shards, memory-mapped, checksummed and resumable.

A store holds the features of one cache fingerprint in `shard-NNNNN` folders of (key, columns) rows, a key being the
sha256 of one (prompt, response) text (`text_key`). Memory does not grow with the data: shards are memory-mapped, the
key -> row index holds keys and row numbers only, and `pair_features` writes each split's (prompt, chosen, rejected)
vectors to its own memory-mapped Arrow file in batches, which every consumer reads in batches. Vectors are stored in
float16 when the backbone computes in a 16-bit dtype (bf16's 8 significant bits fit float16's 11, so within
float16's range, checked on write, nothing is lost) and in float32 otherwise: the stored features always equal what
the backbone computed.

Integrity: each shard folder holds a `checksums.json` manifest (sha256 of every file, written before the folder's
atomic rename); a shard whose files do not match it, or that has none, is reported once, deleted and re-embedded.
"""

import contextlib
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

from ..data import PAIR_METADATA
from ..errors import InputError
from ..runtime import file_digest, state
from .encoding import as_messages

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


@contextlib.contextmanager
def removed_if_unfinished(partial: Path):
    """Deletes the `.partial` folder a write fills when the write fails or is interrupted (a full disk, Ctrl-C):
    a failed run leaves nothing behind that takes space or could be mistaken for data."""
    try:
        yield
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


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
        with removed_if_unfinished(partial), quiet_datasets_progress():
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
        try:
            self._write_pair_file(partial, pairs, metadata, chosen_keys, rejected_keys)
        except FileNotFoundError:  # the folder went while it was written (`rm -r pairs/`): write it once more
            self._write_pair_file(partial, pairs, metadata, chosen_keys, rejected_keys)
        try:
            partial.rename(folder)
        except OSError:
            if not folder.exists():  # another process finished the same file first: use it
                raise
            shutil.rmtree(partial, ignore_errors=True)
        self._verified.add(folder.name)
        return Dataset.from_file(str(folder / "data.arrow"))

    def _write_pair_file(self, partial: Path, pairs, metadata: list, chosen_keys, rejected_keys) -> None:
        """The pairs' `data.arrow` and its manifest in `partial`, `PAIR_BATCH` pairs at a time; nothing is left
        behind when writing fails."""
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        vector = List(Value(str(self.dtype)), length=self.hidden_size)
        features = Features({name: vector for name in FEATURE_COLUMNS} | {name: pairs.features[name]
                                                                          for name in metadata})
        arrow_metadata = pairs.select_columns(metadata).with_format("arrow")
        with removed_if_unfinished(partial):
            writer = ArrowWriter(features=features, path=str(partial / "data.arrow"))
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
