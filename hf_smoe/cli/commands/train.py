"""Train a reward model and write (or push) its checkpoint; every TrainingArguments flag works.

Loads pairs, splits them (seeded, category-stratified), caches backbone features, trains the head with the Trainer,
and writes a checkpoint that loads with AutoModel, its model card and results.json. The data, model and training
arguments are three dataclasses, as in TRL's scripts.
"""

import json

from ...training import DataArguments, ModelArguments, SMoETrainingArguments
from ..parsing import CommandParser

# What `smoe train` changes in SMoETrainingArguments' defaults: a Trainer checkpoint per epoch (the last one kept),
# so that a killed run resumes, and a fixed seed.
TRAIN_DEFAULTS = {"save_strategy": "epoch", "save_total_limit": 1, "seed": 0}


def make_parser() -> CommandParser:
    return CommandParser("train", (DataArguments, ModelArguments, SMoETrainingArguments), doc=__doc__,
                         defaults=TRAIN_DEFAULTS)


def main(data: DataArguments, model: ModelArguments, training: SMoETrainingArguments) -> None:
    from ...training import train_reward_model

    results = train_reward_model(data, model, training)
    print(json.dumps(results, indent=2, default=str))
    print(f"Checkpoint, model card and results.json written to {training.output_dir}")
