"""Loading preference pairs: the registry of formats, format detection, and reading a Hub dataset or local files.

`load_pairs` reads a Hub dataset or a local file through `datasets` and runs the format's adapter
(`hf_smoe.data.formats`), giving pairs in the common schema (`PAIR_FEATURES`).

Bad input is never passed over silently. A record that does not fit its format's schema (a missing column, a field
of the wrong type, a chat role other than system/user/assistant) raises an `InputError` (a `ValueError`) naming the
source, the record index and the field; a file that cannot be read (corrupt JSON, a truncated .gz, a file that is not
parquet, a folder of files with different columns) raises one naming the file and, for JSON lines, the first bad line.
Pairs a format's recipe excludes, or that carry no preference signal (ties, a missing (null or NaN) score, label or
rating, transcripts whose prompts differ, an empty prompt or response, responses identical up to surrounding
whitespace), are dropped and counted: one warning per reason, with its count. A number is never compared when it is
missing. A source that leaves no pair at all raises an error saying what was dropped.

Where the papers are silent, the choice made is written in the adapter's docstring.
"""

import gzip
import inspect
import json
import os
import random
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
from datasets import Dataset, DatasetDict, load_dataset
from datasets.exceptions import DatasetsError

from ..errors import InputError
from .formats import (common_schema, dsp, helpsteer2, hh_rlhf, personal_llm, preference_700k, rpr, shp, trl,
                      webgpt)
from .schema import PAIR_COLUMNS, PAIR_FEATURES, Skip, unusable

# Hub datasets whose format is known by name; other sources are recognized from their columns.
HUB_FORMATS = {
    "Anthropic/hh-rlhf": "hh-rlhf",
    "stanfordnlp/SHP": "shp",
    "microsoft/rpr": "rpr",
    "nvidia/HelpSteer2": "helpsteer2",
    "hendrydong/preference_700K": "preference-700k",
    "namkoong-lab/PersonalLLM": "personal-llm",
}


@dataclass(frozen=True)
class Adapter:
    """A dataset format: the function turning its records into pairs, the columns it needs, and (for formats that
    share their columns with another) a test on the first record that tells them apart."""

    pairs: Callable[..., Iterator[dict | Skip]]
    columns: tuple
    recognizes: Callable[[dict], bool] | None = None

    def option_names(self) -> list:
        return [name for name in inspect.signature(self.pairs).parameters if name not in ("dataset", "seed")]

    def matches(self, dataset: Dataset) -> bool:
        if not set(self.columns) <= set(dataset.column_names):
            return False
        return self.recognizes is None or (len(dataset) > 0 and self.recognizes(dataset[0]))

    def __call__(self, dataset: Dataset, *, seed: int = 0, **options) -> Iterator[dict | Skip]:
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)}; this format takes {self.option_names()}.")
        missing = [column for column in self.columns if column not in dataset.column_names]
        if missing:
            raise InputError(f"missing column(s) {missing}; the dataset has {dataset.column_names}: add them, or "
                             f"pass the dataset's own format (one of {list(FORMATS)}).")
        if "seed" in inspect.signature(self.pairs).parameters:
            options["seed"] = seed
        return self.pairs(dataset, **options)


FORMATS = {
    "trl": Adapter(trl.pairs, trl.COLUMNS),
    "hh-rlhf": Adapter(hh_rlhf.pairs, hh_rlhf.COLUMNS, recognizes=hh_rlhf.recognizes),
    "shp": Adapter(shp.pairs, shp.COLUMNS),
    "rpr": Adapter(rpr.pairs, rpr.COLUMNS),
    "helpsteer2": Adapter(helpsteer2.pairs, helpsteer2.COLUMNS),
    "preference-700k": Adapter(preference_700k.pairs, preference_700k.COLUMNS),
    "personal-llm": Adapter(personal_llm.pairs, personal_llm.COLUMNS),
    "dsp": Adapter(dsp.pairs, dsp.COLUMNS),
    "webgpt": Adapter(webgpt.pairs, webgpt.COLUMNS),
    "hf_smoe": Adapter(common_schema.pairs, common_schema.COLUMNS, recognizes=common_schema.recognizes),
}
# Most specific first; preference-700k reads like TRL's conversational format and is known by its Hub name.
DETECTION_ORDER = ("personal-llm", "rpr", "helpsteer2", "shp", "dsp", "webgpt", "hf_smoe", "hh-rlhf", "trl")
PARQUET_MAGIC = b"PAR1"  # the first bytes of every parquet file
LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json"}


def load_pairs(source, format: str | None = None, *, split: str = "train", max_pairs: int | None = None,
               seed: int = 0, category: str | None = None, hub_options: dict | None = None, **options) -> Dataset:
    """Loads preference pairs in the common schema (`PAIR_FEATURES`) from any supported format.

    Args:
        source: a Hub dataset name (read with `datasets.load_dataset(source, split=split)`), a local file or folder
            of json / jsonl / jsonl.gz / JSON-array / parquet files (read whole with `datasets.load_dataset("json"
            or "parquet", data_files=...)`), or a `datasets.Dataset` already loaded (e.g. a Hub subset).
        format: one of `FORMATS`; by default known from the Hub name (`HUB_FORMATS`) or detected from the columns.
        split: the Hub split to read.
        hub_options: extra `datasets.load_dataset` arguments for a Hub name: `data_dir` or `data_files` to read
            one subset (e.g. `{"data_dir": "helpful-base"}` for Anthropic/hh-rlhf), `name`, `revision`, `token`.
        max_pairs: keep a seeded random subset of this many pairs (>= 1), in their original order.
        seed: seeds `max_pairs` and the formats that draw (SHP's one pair per post, PersonalLLM's users).
        category: the category of every pair the format leaves without one (a one-domain source, e.g. HH helpful).
        **options: the format's options (see its adapter, e.g. `append_criterion` for rpr and dsp).

    Raises `InputError` (one line naming the source, and the record and field or the file and line) for input the
    user can fix, including a source that leaves no pair; dropped pairs are counted in one warning per reason.
    """
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
        raise InputError(f"max_pairs: must be >= 1 (the number of pairs to keep; leave it unset to keep every pair), "
                         f"got {max_pairs!r}.")
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; formats are {list(FORMATS)}.")
    dataset = _load_source(source, split, hub_options or {})
    if len(dataset) == 0:
        raise InputError(f"dataset {_describe(source)}: holds no records; give a file or split with data.")
    if format is None:
        format = HUB_FORMATS.get(source) if isinstance(source, str) else None
        format = format or _detect_format(dataset, source)
    try:
        pairs, dropped = _collect(FORMATS[format](dataset, seed=seed, **options))
    except InputError as error:
        raise InputError(f"{format} ({_describe(source)}): {error}") from None
    if not pairs:
        fixes = "".join(f"; {fix}" for fix in dict.fromkeys(skip.fix for skip in dropped if skip.fix))
        what = ", ".join(f"{count} {skip.reason}" for skip, count in dropped.items()) or "nothing"
        raise InputError(f"{format} ({_describe(source)}): no usable pair in {len(dataset)} records (dropped {what})"
                         f"{fixes}.")
    for skip, count in dropped.items():
        warnings.warn(f"{format}: dropped {count} {skip.reason}.", stacklevel=2)
    if max_pairs is not None and max_pairs < len(pairs):
        pairs = [pairs[index] for index in sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))]
    if category is not None:
        pairs = [{**pair, "category": pair["category"] or category} for pair in pairs]
    return Dataset.from_dict({column: [pair[column] for pair in pairs] for column in PAIR_COLUMNS},
                             features=PAIR_FEATURES)


def _describe(source) -> str:
    return "in-memory dataset" if isinstance(source, Dataset) else str(source)


def _load_source(source, split: str, hub_options: dict) -> Dataset:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        raise InputError(f"dataset: got a DatasetDict with splits {list(source)}; pass one split, e.g. "
                         f"dataset[{next(iter(source), 'train')!r}].")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"dataset: expected a Hub name, a file or folder path, or a datasets.Dataset; got "
                         f"{type(source).__name__}. Wrap records with datasets.Dataset.from_list(records) (or "
                         f"Dataset.from_pandas(frame)).")
    path = Path(source).expanduser()
    if not path.exists():
        if _builder(path) or str(source).startswith((".", "/", "~")):
            raise InputError(f"dataset: no such file {source}; give an existing local file or a Hub name.")
        return _load_hub(str(source), split, hub_options)
    files = sorted(p for p in path.iterdir() if _builder(p) and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise InputError(f"dataset {source}: the folder holds no data file; put json, jsonl, jsonl.gz or parquet "
                         f"files ({', '.join(LOCAL_BUILDERS)}) in it.")
    builders = {_builder(file) for file in files}
    if len(builders) != 1 or None in builders:
        raise InputError(f"dataset {source}: expected json, jsonl, jsonl.gz or parquet file(s) of one kind "
                         f"({', '.join(LOCAL_BUILDERS)}), found {[file.name for file in files]}; keep one kind of "
                         f"file per folder, or give one file.")
    builder = builders.pop()
    for file in files:  # cheap checks first: datasets fails on these with a traceback or a bare StopIteration
        problem = "the file is empty (0 bytes); give a file with data" if file.stat().st_size == 0 else (
            _parquet_problem(file) if builder == "parquet" else None)
        if problem:
            raise InputError(f"dataset {file}: {problem}.")
    if builder == "parquet" and len(files) > 1:
        _raise_for_mixed_columns(files, {file: pyarrow.parquet.read_schema(file).names for file in files})
    try:
        dataset = load_dataset(builder, data_files=[str(file) for file in files], split="train")
        dataset.data.table.validate(full=True)  # text that is not UTF-8 may load, and fail only when read
    except (DatasetsError, pyarrow.ArrowException, ValueError, EOFError, OSError, zlib.error, StopIteration,
            RuntimeError) as error:
        # The file is to blame only if reading it ourselves finds what is wrong; anything else (a full disk while
        # datasets writes its cache: an OSError with an errno) is re-raised as it is.
        if builder == "json" and not (isinstance(error, OSError) and error.errno):
            _raise_for_json_problems(files)
        raise
    if builder == "json" and _has_json_feature(dataset.features):
        # datasets reads a field whose JSON type changes from record to record as `Json`, decoding the text "3" of
        # one record into the number 3: the values are no longer what the file holds.
        _raise_for_json_problems(files)
    return dataset


def _raise_for_json_problems(files: list) -> None:
    """The error for what makes json/jsonl files unreadable as one dataset, if reading them ourselves finds it."""
    columns = {}
    for file in files:
        problem, columns[file] = _json_problem(file)
        if problem:
            raise InputError(f"dataset {file}: {problem}.")
    _raise_for_mixed_columns(files, columns)


def _has_json_feature(feature) -> bool:
    """Whether `feature` (a dataset's features, or one of them) is or holds datasets' untyped `Json` feature."""
    if isinstance(feature, datasets.Json):
        return True
    if isinstance(feature, dict):
        return any(_has_json_feature(inner) for inner in feature.values())
    inner = getattr(feature, "feature", None)  # List, Sequence, LargeList
    return inner is not None and _has_json_feature(inner)


def _load_hub(name: str, split: str, hub_options: dict) -> Dataset:
    try:
        return load_dataset(name, split=split, **hub_options)
    except ConnectionError as error:  # offline (HF_HUB_OFFLINE=1) or the Hub unreachable; not cached locally
        offline = " (HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise InputError(f"dataset {name!r}: cannot load it from the Hugging Face Hub{offline}: it is neither a local "
                         f"file or folder nor in the local cache ({_one_line(error)}); check the path or name, or go "
                         f"online to download it once.") from error


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _parquet_problem(file: Path) -> str | None:
    try:
        rows = pyarrow.parquet.read_metadata(file).num_rows
    except (pyarrow.ArrowException, OSError) as error:
        return (f"not a readable parquet file ({_one_line(error)}); give a parquet file, or a .json/.jsonl file "
                f"with the matching extension")
    return "the file holds no records (0 rows); give a file with data" if rows == 0 else None


def _raise_for_mixed_columns(files: list, columns: dict) -> None:
    """The error for a folder whose files have different columns (datasets cannot concatenate them)."""
    first = files[0]
    for file in files[1:]:
        if columns.get(file) is not None and columns.get(first) is not None and \
                sorted(columns[file]) != sorted(columns[first]):
            raise InputError(f"dataset {file.parent}: its files have different columns ({first.name}: "
                             f"{sorted(columns[first])}, {file.name}: {sorted(columns[file])}); a folder must hold "
                             f"one dataset: move the other files out, or load each file on its own.")


def _open_text(file: Path):
    return gzip.open(file, "rt", encoding="utf-8") if file.name.endswith(".gz") else open(file, encoding="utf-8")


def _json_problem(file: Path) -> tuple:
    """What makes a json/jsonl(.gz) file unreadable as records, read line by line with `json.loads` (None if we find
    nothing), and the columns of its records (None if unknown)."""
    with open(file, "rb") as handle:
        if handle.read(4) == PARQUET_MAGIC:
            return "it is a parquet file, not JSON; give it the .parquet extension", None
    lines = []
    try:
        with _open_text(file) as handle:
            for line in handle:
                lines.append(line)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        return (f"the gzip data is corrupt or cut off after line {len(lines)} ({_one_line(error)}); download or "
                f"compress the file again"), None
    except UnicodeDecodeError as error:
        return f"line {len(lines) + 1} is not UTF-8 text ({error.reason}); save the file as UTF-8", None
    text = "".join(lines)
    if not text.strip():
        return "the file holds no records (only whitespace); give a file with data", None
    if text.lstrip().startswith("["):  # one JSON document: an array of records
        try:
            document = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as error:
            line = getattr(error, "lineno", None)
            return (f"invalid JSON{f' at line {line}' if line else ''} ({_one_line(getattr(error, 'msg', error))}); "
                    f"a .json file holds a JSON array of records (objects) or one JSON object per line"), None
        records = list(enumerate(document, 1))
        where = "item"
    else:
        records, where = [], "line"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line, parse_constant=_no_constant)))
            except (json.JSONDecodeError, ValueError) as error:
                return (f"line {number} is not valid JSON ({_one_line(getattr(error, 'msg', error))}); fix or delete "
                        f"that line (JSON Lines: one JSON object per line)"), None
    if not records:
        return "the file holds no records (an empty JSON array); give a file with data", None
    if all(record == {} for _, record in records):
        return "every record is an empty object ({}), so there is no data; give records with fields", None
    for number, record in records:
        if not isinstance(record, dict):
            return (f"{where} {number} is a JSON {type(record).__name__}, not a record (an object of named "
                    f"fields); write one object per record"), None
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return (f"{where} {number} holds text that is not valid Unicode (a lone surrogate escape such as "
                    f"\\ud800); fix or delete that {where}"), None
    kinds = {}
    for number, record in records:  # a field whose JSON type changes from record to record
        for field, value in record.items():
            if value is None:
                continue
            kind, first = _json_kind(value), kinds.setdefault(field, (_json_kind(value), number))
            if kind != first[0]:
                return (f"{where} {number}: field {field!r} is a {kind} where {where} {first[1]} has a {first[0]}; "
                        f"give the field one type in every record"), None
    return None, sorted({field for _, record in records for field in record})


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; write null for a missing number")


def _json_kind(value) -> str:
    return {bool: "boolean", str: "string", list: "list", dict: "object"}.get(type(value), "number")


def _builder(path: Path) -> str | None:
    return next((builder for suffix, builder in LOCAL_BUILDERS.items() if path.name.endswith(suffix)), None)


def _detect_format(dataset: Dataset, source) -> str:
    for name in DETECTION_ORDER:
        if FORMATS[name].matches(dataset):
            return name
    if isinstance(source, (str, Path)) and Path(source).is_file() and _builder(Path(source)) == "json":
        problem, _ = _json_problem(Path(source))  # e.g. a JSON array of strings, which datasets reads as `text`
        if problem:
            raise InputError(f"dataset {source}: {problem}.")
    raise InputError(f"cannot tell the format of {_describe(source)} from its columns {dataset.column_names}; "
                     f"pass format= one of {list(FORMATS)}.")


def _collect(outcomes) -> tuple:
    """The adapter's pairs, less those it skipped or that carry no preference signal, and the count of each kind of
    `Skip` dropped (`load_pairs` warns once per reason)."""
    pairs, dropped = [], Counter()
    for outcome in outcomes:
        skip = outcome if isinstance(outcome, Skip) else unusable(outcome)
        if skip:
            dropped[Skip(skip) if isinstance(skip, str) else skip] += 1
        else:
            pairs.append(outcome)
    return pairs, dropped
