"""Reward-tune a backbone's top layers on cached hidden states; writes a folder any --backbone takes.

Splits the pairs as `smoe train` does (same seed and fractions: same test set, never read here), caches the hidden
states entering the top --layers layers once per text, tunes those layers and a Bradley-Terry head on the train
split, and writes the tuned backbone (loads with AutoModel, no hf_smoe needed) with its tokenizer and results.json.
"""

import json

from ...training import BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments
from ..parsing import CommandParser


def make_parser() -> CommandParser:
    return CommandParser("tune-backbone", (DataArguments, BackboneTuningArguments, BackboneTuningTrainingArguments),
                         doc=__doc__)


def main(data: DataArguments, tuning: BackboneTuningArguments, training: BackboneTuningTrainingArguments) -> None:
    from ...training import tune_backbone

    results = tune_backbone(data, tuning, training)
    print(json.dumps(results, indent=2, default=str))
    print(f"Tuned backbone written to {training.output_dir}; train on it with --backbone {training.output_dir}")
