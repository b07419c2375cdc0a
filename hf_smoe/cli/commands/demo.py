"""Offline end-to-end demo on the embedded defaults.

Embeds a generated preference set with SmolLM2-135M-Instruct, trains single, vanilla, micro and sparse, and compares
them.
"""

from dataclasses import dataclass, field

from ...training import SMoETrainingArguments
from ..arguments import AT_LEAST_ONE, CACHE_DIR_HELP, POSITIVE, SEED
from ..parsing import CommandParser


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where the sparse checkpoint is written"})
    num_prompts: int | None = field(default=None, metadata={"help": "prompts to generate (default: the set's own)"})
    num_experts: int = field(default=4, metadata={"help": "K of the mixtures"})
    epochs: float = field(default=3.0, metadata={"help": "epochs of every head"})
    cache_dir: str | None = field(default=None, metadata={"help": CACHE_DIR_HELP})
    seed: int = field(default=0, metadata={"help": "seed of the generated set, its split and the training"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "num_prompts", "num_experts")
        POSITIVE.check(self, "epochs")
        SEED.check(self, "seed")


def make_parser() -> CommandParser:
    return CommandParser("demo", DemoArguments, doc=__doc__, passes_on=SMoETrainingArguments)


def main(demo: DemoArguments, training: dict) -> None:
    from ...reproduce import run_demo

    run_demo(output_dir=demo.output_dir, num_prompts=demo.num_prompts, num_experts=demo.num_experts,
             epochs=demo.epochs, seed=demo.seed, cache_dir=demo.cache_dir, training=training)
