"""`smoe reproduce backbone`: a reward-tuned backbone per reproduction dataset, for the reproductions' `--backbone`."""

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

from datasets import concatenate_datasets

from ..errors import InputError
from ..runtime import DEFAULT_BACKBONE
from ..training import BackboneTuningArguments, BackboneTuningTrainingArguments, tune_on_splits
from .reproduction_datasets import (DSP_MAX_LENGTH, general_mixture, general_splits, load_reproduction_pairs,
                                    reproduction_data, reproduction_splits)
from .results import markdown_header, write_results

TUNED_BACKBONE_DATASETS = ("hh", "dsp", "general")  # the data every reproduction trains its heads on
TUNING_PAIRS = ("train", "unsampled")  # what `reproduce backbone` tunes on, see `with_unsampled_pairs`


def with_unsampled_pairs(splits: dict, pool, group_by: str) -> dict:
    """`splits` with every pair of `pool` (the dataset's whole source) that the reproduction's sample left out added
    to train, except a pair whose `group_by` value (its prompt or query) is in validation or test: more preference
    data for the backbone's tuning, none of it from a prompt either stage is measured on."""
    def group(value):
        return json.dumps(value, sort_keys=True)

    def identity(row):
        return json.dumps([row[group_by], row["chosen"], row["rejected"]], sort_keys=True)

    held_out = {group(value) for name in ("validation", "test") for value in splits[name][group_by]}
    sampled = {identity(row) for row in splits["train"]}
    unsampled = pool.filter(lambda row: group(row[group_by]) not in held_out and identity(row) not in sampled)
    return {**splits, "train": concatenate_datasets([splits["train"], unsampled.select_columns(
        splits["train"].column_names)])}


def tuning_splits(name: str, size: int | None, tuning_pairs: str, data_root=None) -> tuple:
    """(splits, max_length) of `reproduce backbone` for dataset `name`: the splits its heads use, with the
    unsampled pairs of its source added to train when `tuning_pairs` is "unsampled"."""
    if name == "general":
        splits, max_length, group_by = general_splits(data_root), DSP_MAX_LENGTH, "prompt"
        source = partial(general_mixture, None, None, data_root=data_root)
    else:
        data = reproduction_data(name, size)
        splits, max_length, group_by = reproduction_splits(data, data_root), data.max_length, data.group_by
        source = partial(load_reproduction_pairs, replace(data, size=None), 0, data_root)
    if tuning_pairs == "train":
        return splits, max_length
    if name == "demo":
        raise InputError("tuning_pairs: the demo set is generated, so no pairs are left unsampled; use 'train'.")
    return with_unsampled_pairs(splits, source(), group_by), max_length


def backbone_markdown(record: dict, tuning: dict | None) -> str:
    lines = markdown_header("dataset", "layers tuned", "train pairs",
                            "validation accuracy: probe head before tuning → tuned", "hidden states (one-off)",
                            "s per epoch")
    lora = f" (LoRA r = {tuning['lora_rank']})" if (tuning or {}).get("lora_rank") else ""
    lines += [f"| {name} | {run['layers_tuned']} of {run['layers']}{lora} | {run['train_pairs']} | "
              + ("" if run["probe_validation_accuracy"] is None
                 else f"{100 * run['probe_validation_accuracy']:.1f} → ")
              + f"{100 * run['validation_accuracy']:.1f} | {run['hidden_state_seconds']:.0f} s | "
              f"{run['seconds_per_epoch']:.0f} |" for name, run in record.items()]
    return "\n".join(lines) + "\n"


def reproduce_backbone(datasets=TUNED_BACKBONE_DATASETS, output_dir="outputs/reproduce/backbone",
                       backbone=DEFAULT_BACKBONE, sizes: dict | None = None, seed: int = 0, cache_dir=None,
                       data_root=None, tuning: dict | None = None, training: dict | None = None,
                       tuning_pairs: str = "train") -> dict:
    """A reward-tuned backbone per reproduction dataset (`output_dir/NAME`), its top `layers` layers tuned
    (`tune_on_splits`) on the train split that dataset's heads train on (validation monitors it; the test split is
    never read): hh for Table 1, dsp for Table 1, Fig. 2 and Table 4, general for Table 5, Fig. 8 and Table 4. Each
    folder is then the `--backbone` of those reproductions. `tuning_pairs` "unsampled" adds the source's pairs the
    sample left out (`with_unsampled_pairs`). `tuning` and `training`: overrides of `BackboneTuningArguments`
    (layers, head_init, lora_rank, ...) and `BackboneTuningTrainingArguments`."""
    if tuning_pairs not in TUNING_PAIRS:
        raise InputError(f"tuning_pairs: {tuning_pairs!r} is not one of {', '.join(TUNING_PAIRS)}.")
    output, sizes, record = Path(output_dir).expanduser(), sizes or {}, {}
    for name in datasets:
        splits, max_length = tuning_splits(name, sizes.get(name), tuning_pairs, data_root)
        tuning_arguments = BackboneTuningArguments(backbone=backbone, **(tuning or {}))
        training_arguments = BackboneTuningTrainingArguments(output_dir=str(output / name), seed=seed,
                                                             disable_tqdm=True, overwrite_output_dir=True,
                                                             **(training or {}))
        job = {"reproduction": name, "sizes": sizes, "tuning_pairs": tuning_pairs}
        record[name] = tune_on_splits(splits, tuning_arguments, training_arguments, job, cache_dir=cache_dir,
                                      max_length=max_length)
        print(f"{name}: validation accuracy {record[name]['validation_accuracy']:.3f}, "
              f"{record[name]['seconds_per_epoch']:.0f} s per epoch")
    write_results(output, "backbone", backbone_markdown(record, tuning),
                  {"experiment": "backbone", "datasets": list(datasets), "backbone": backbone, "sizes": sizes,
                   "seed": seed, "tuning_pairs": tuning_pairs, "tuning": tuning or {}, "training": training or {}},
                  record)
    return record
