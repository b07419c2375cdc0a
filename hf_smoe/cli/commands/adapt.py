"""Personalize the router from ~50 labeled pairs.

Adapts the router on N pairs of DATA (Hedge or HyRe; experts and backbone frozen), measures accuracy before/after on
the other pairs, and writes the router file and a bar chart of the weight shift.
"""

from dataclasses import dataclass, field
from typing import Literal

from ..arguments import (AT_LEAST_ONE, CACHE_DIR_HELP, CHECKPOINT_LENGTH_HELP, SEED, CheckpointArguments,
                         overwrite_field)
from ..parsing import CommandParser


@dataclass
class AdaptArguments:
    data: str = field(metadata={"help": "the user's labeled pairs (any supported format)"})
    output: str = field(metadata={"metavar": "ROUTER", "help": "router file (.safetensors)"})
    format: str | None = field(default=None, metadata={"help": "data format (default: detected)"})
    n: int = field(default=50, metadata={"help": "pairs to adapt on (the rest measure the change)"})
    method: Literal["hedge", "hyre"] = field(default="hedge", metadata={
        "help": "hedge: adapt the router itself (MiCRo Alg. 1); hyre: input-independent head weights"})
    overwrite: bool = overwrite_field("the router file")
    max_eval_pairs: int | None = field(default=None, metadata={"help": "at most this many pairs measure the change"})
    max_length: int | None = field(default=None, metadata={"help": CHECKPOINT_LENGTH_HELP})
    cache_dir: str | None = field(default=None, metadata={"help": CACHE_DIR_HELP})
    seed: int = field(default=0, metadata={"help": "seed of the choice of the N pairs"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "n", "max_eval_pairs", "max_length")
        SEED.check(self, "seed")


def make_parser() -> CommandParser:
    return CommandParser("adapt", (CheckpointArguments, AdaptArguments), doc=__doc__, positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, adapt: AdaptArguments) -> None:
    from ...personalization import adapt_checkpoint

    result = adapt_checkpoint(checkpoint.checkpoint, adapt.data, output=adapt.output, n=adapt.n, method=adapt.method,
                              format=adapt.format, seed=adapt.seed, max_eval_pairs=adapt.max_eval_pairs,
                              cache_dir=adapt.cache_dir, max_length=adapt.max_length, overwrite=adapt.overwrite)
    print(f"{result['method']} on {result['n']} pairs; accuracy on the other {result['eval_pairs']} pairs: "
          f"{result['accuracy_before']:.4f} -> {result['accuracy_after']:.4f}")
    print("weight shift (mean routing after - before): "
          + " ".join(f"E{k} {shift:+.3f}" for k, shift in enumerate(result["weight_shift"])))
    print(f"Router written to {result['router']}; chart {result['chart']}")
