"""Every paper metric the data allows, for a checkpoint.

Accuracy, loss terms, routing entropy, global entropy, expert correlation; with categories also coverage, purity and
specialization. Printed as a table and written as JSON.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import CheckpointArguments, MeasuredPairsArguments, overwrite_field
from ..parsing import CommandParser
from ..printing import print_values


@dataclass
class EvalOutputArguments:
    output: str | None = field(default=None, metadata={"help": "JSON file (default: CHECKPOINT/eval_results.json)"})
    overwrite: bool = overwrite_field("--output")


def make_parser() -> CommandParser:
    return CommandParser("eval", (CheckpointArguments, MeasuredPairsArguments, EvalOutputArguments), doc=__doc__,
                         positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, data: MeasuredPairsArguments, output: EvalOutputArguments) -> None:
    from ...evaluation import evaluate_checkpoint, is_evaluation_file, write_evaluation
    from ...runtime import check_output_file

    path = check_output_file(output.output or Path(checkpoint.checkpoint) / "eval_results.json", ".json",
                             overwrite=output.overwrite or output.output is None, ours=is_evaluation_file)
    results = evaluate_checkpoint(checkpoint.checkpoint, data.dataset, format=data.format, split=data.hub_split(),
                                  max_pairs=data.max_pairs, seed=data.seed, cache_dir=data.cache_dir,
                                  max_length=data.max_length)
    print_values(results, "{:.4f}")
    job = {"checkpoint": checkpoint.checkpoint, **dataclasses.asdict(data)}
    print(f"Written to {write_evaluation(results, path, job)}")
