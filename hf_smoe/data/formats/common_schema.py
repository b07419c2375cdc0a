"""hf_smoe's own pair schema (`PAIR_FEATURES`), as saved from `load_pairs` or written by `generate_preference_set`."""

from collections.abc import Iterator

from datasets import Dataset

from ..schema import PAIR_METADATA, Skip, make_pair, read_metadata, read_prompt, read_text

COLUMNS = ("prompt", "chosen", "rejected")


def pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """Pairs already in the common schema: validated, kept as they are."""
    metadata = [name for name in PAIR_METADATA if name in dataset.column_names]
    for index, record in enumerate(dataset):
        yield make_pair(read_prompt(record["prompt"], index), read_text(record["chosen"], index, "chosen"),
                        read_text(record["rejected"], index, "rejected"), **read_metadata(record, index, metadata))


def recognizes(record: dict) -> bool:
    """Whether a record with the schema's columns holds chat messages (TRL's explicit standard format has text)."""
    return isinstance(record["prompt"], list) and isinstance(record["chosen"], str)
