"""The seeded, stratified train/validation/test split the shared test files need."""

import json
import random
from collections import defaultdict

from datasets import Dataset, DatasetDict

from ..errors import InputError


def split_pairs(dataset: Dataset, *, seed: int = 0, validation: float = 0.1, test: float = 0.1,
                stratify: str | None = "category", group_by: str | None = None) -> DatasetDict:
    """A seeded train/validation/test split, stratified by `stratify`, optionally keeping groups together.

    Procedure: the units of the split are single pairs, or, with `group_by` (e.g. `"prompt"`), the sets of pairs
    sharing that column's value, so that no prompt is seen in two splits. Units are grouped by the `stratify` value
    of their first pair (one group when `stratify` is None, the column is absent or all its values are None;
    otherwise None is a group of its own). Groups are visited in sorted order; the units of each are shuffled with
    one `random.Random(seed)` and cut in order: round(n * test) to test, round(n * validation) to validation (halves
    round up), the rest to train. Each split keeps the dataset's order.

    So the same seed gives the same split, the splits are disjoint and cover the dataset, and each group's count of
    units in each split is within one of its requested share. Without `group_by`, pairs expanded from one source
    record (rpr, helpsteer2, dsp, personal-llm) can land in different splits.
    """
    if not (validation >= 0 and test >= 0 and validation + test < 1):  # also refuses NaN
        raise InputError(f"validation ({validation}) and test ({test}) must be >= 0 and sum to less than 1.")
    values = dataset[stratify] if stratify in dataset.column_names else [None] * len(dataset)
    strata = defaultdict(list)
    for unit in _split_units(dataset, group_by):
        strata[values[unit[0]]].append(unit)
    rng = random.Random(seed)
    splits = {"train": [], "validation": [], "test": []}
    for value in sorted(strata, key=lambda v: (v is not None, str(v))):
        units = strata[value]
        rng.shuffle(units)
        num_test, num_validation = int(len(units) * test + 0.5), int(len(units) * validation + 0.5)
        for name, chosen in (("test", units[:num_test]), ("validation", units[num_test:num_test + num_validation]),
                             ("train", units[num_test + num_validation:])):
            splits[name] += [index for unit in chosen for index in unit]
    return DatasetDict({name: dataset.select(sorted(indices)) for name, indices in splits.items()})


def _split_units(dataset: Dataset, group_by: str | None) -> list:
    """Lists of pair indices that must share a split, in order of first appearance."""
    if group_by is None:
        return [[index] for index in range(len(dataset))]
    if group_by not in dataset.column_names:
        raise InputError(f"group_by: no column {group_by!r}; columns are {dataset.column_names}.")
    units = defaultdict(list)
    for index, value in enumerate(dataset[group_by]):
        units[json.dumps(value, sort_keys=True)].append(index)
    return list(units.values())
