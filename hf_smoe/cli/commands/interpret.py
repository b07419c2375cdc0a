"""Describe each expert in one line and check the descriptions (paper §6.1).

Splits DATA by prompt into two halves; an LLM describes each expert from its 20 top-routed prompts of the first half
(Fig. 4), an LLM judge answers YES/NO for a stratified sample of the second half (Fig. 5: 100 prompts from the
expert's top 10%, 100 from the rest), and description fidelity (Eq. 19-20) is their correlation with the routing,
beside the random baseline (shuffled prompts, router fixed) and top-10% expert specialization (Eq. 12). Writes
interpretation.json and interpretation.md and adds the table to the checkpoint's model card. Every answer is cached,
so a rerun or an interrupted run resumes for free.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import CheckpointArguments, GeneratorArguments, MeasuredPairsArguments, overwrite_field
from ..parsing import CommandParser


@dataclass
class InterpretOutputArguments:
    no_random_baseline: bool = field(default=False, metadata={"help": "skip the random baseline (half the calls)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "default: the checkpoint folder, whose interpretation files a rerun refreshes; elsewhere earlier "
                "ones are replaced only with --overwrite"})
    overwrite: bool = overwrite_field("interpretation.json/.md in --output-dir")


def make_parser() -> CommandParser:
    return CommandParser("interpret", (CheckpointArguments, MeasuredPairsArguments, GeneratorArguments,
                                       InterpretOutputArguments), doc=__doc__, positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, data: MeasuredPairsArguments, generators: GeneratorArguments,
         output: InterpretOutputArguments) -> None:
    from ...interpret import expert_table_markdown, interpret_checkpoint

    result = interpret_checkpoint(
        checkpoint.checkpoint, data.dataset, generator=generators.generator,
        generator_model=generators.generator_model, judge=generators.judge, judge_model=generators.judge_model,
        format=data.format, split=data.hub_split(), max_pairs=data.max_pairs, seed=data.seed,
        cache_dir=data.cache_dir, generation_cache=generators.generation_cache, max_length=data.max_length,
        random_baseline=not output.no_random_baseline, output_dir=output.output_dir, overwrite=output.overwrite)
    print(expert_table_markdown(result))
    print(f"Written to {Path(output.output_dir or checkpoint.checkpoint) / 'interpretation.json'} and "
          "interpretation.md")
