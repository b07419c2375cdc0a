"""preference-700K (Dong et al. 2024; the paper's real-world data)."""

from collections.abc import Iterator

from datasets import Dataset

from ..schema import Skip
from . import trl

COLUMNS = trl.COLUMNS


def pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """TRL's conversational format with an implicit prompt, `chosen` and `rejected` being whole conversations that
    end with the compared assistant turn."""
    return trl.pairs(dataset, conversational=True)
