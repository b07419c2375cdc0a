"""Describe each expert in one line and check the descriptions (paper §6.1).

Splits DATA by prompt into two halves; an LLM describes each expert from its 20 top-routed prompts of the first half
(an answer that copies the instructions or a prompt is asked again), an LLM judge answers YES/NO for a stratified
sample of the second half (100 prompts from the expert's top 10%, 100 from the rest), and description fidelity
(Eq. 19-20) is their correlation with the routing, beside the random baseline (shuffled prompts, router fixed), top-10%
expert specialization (Eq. 12) and each expert's distinctive words (no LLM). The defaults suit small offline models
(a short describer prompt, a direct judge question, a YES threshold calibrated on the first half); --describer-prompt
paper --judge-prompt paper --no-calibrate-threshold is the paper's Fig. 4-5 protocol. Writes interpretation.json and
interpretation.md and adds the table to the checkpoint's model card. Every answer is cached, so a rerun or an
interrupted run resumes for free.

With --check-judge DESCRIPTIONS (a JSON or YAML file of category: one-line description), only the judge is measured,
cheaply, before that run: each description is judged against prompts of every category of the measuring half, and
the YES rates, the fidelity an ideal router would reach through this judge (on YES/NO, then on P(YES)) and the AUC
of P(YES) are printed and written as `judge_check` into interpretation.json; the experts are not described.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ...interpret import CHECK_PROMPTS_PER_CATEGORY
from ...interpret.generators.loading import ENDPOINT_TIMEOUT
from ..arguments import (AT_LEAST_ONE, POSITIVE, CheckpointArguments, GeneratorArguments, MeasuredPairsArguments,
                         overwrite_field)
from ..parsing import CommandParser


@dataclass
class InterpretOutputArguments:
    no_random_baseline: bool = field(default=False, metadata={"help": "skip the random baseline (half the calls)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "default: the checkpoint folder, whose interpretation files a rerun refreshes; elsewhere earlier "
                "ones are replaced only with --overwrite"})
    overwrite: bool = overwrite_field("interpretation.json/.md in --output-dir")


@dataclass
class EndpointArguments:
    endpoint_timeout: float = field(default=ENDPOINT_TIMEOUT, metadata={
        "help": "seconds a generator or judge given as a URL may take for one answer before the request is sent "
                "again (at most 4 more times)"})

    def __post_init__(self):
        POSITIVE.check(self, "endpoint_timeout")


@dataclass
class JudgeCheckArguments:
    check_judge: str | None = field(default=None, metadata={
        "metavar": "DESCRIPTIONS",
        "help": "a JSON or YAML file mapping categories of the data to a hand-written one-line description: measure "
                "the judge on them (YES rates, ideal fidelity, AUC of P(YES)) and stop, without describing experts"})
    check_prompts: int = field(default=CHECK_PROMPTS_PER_CATEGORY, metadata={
        "help": "distinct measuring prompts judged per category by --check-judge (a seeded sample)"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "check_prompts")


def make_parser() -> CommandParser:
    return CommandParser("interpret", (CheckpointArguments, MeasuredPairsArguments, GeneratorArguments,
                                       EndpointArguments, InterpretOutputArguments, JudgeCheckArguments), doc=__doc__,
                         positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, data: MeasuredPairsArguments, generators: GeneratorArguments,
         endpoint: EndpointArguments, output: InterpretOutputArguments, check: JudgeCheckArguments) -> None:
    from ...interpret import check_checkpoint_judge, expert_table_markdown, interpret_checkpoint, judge_check_markdown

    written = Path(output.output_dir or checkpoint.checkpoint) / "interpretation.json"
    if check.check_judge is not None:
        result = check_checkpoint_judge(
            checkpoint.checkpoint, data.dataset, check.check_judge, generator=generators.generator,
            generator_model=generators.generator_model, judge=generators.judge, judge_model=generators.judge_model,
            format=data.format, split=data.hub_split(), max_pairs=data.max_pairs, seed=data.seed,
            generation_cache=generators.generation_cache, per_category=check.check_prompts,
            settings=generators.reading(),
            output_dir=output.output_dir, overwrite=output.overwrite, endpoint_timeout=endpoint.endpoint_timeout)
        print("\n".join(judge_check_markdown(result, f"distinct measuring prompts (at most {check.check_prompts} "
                                                      "per category)")))
        print(f"Written to {written} (judge_check)")
        return
    result = interpret_checkpoint(
        checkpoint.checkpoint, data.dataset, generator=generators.generator,
        generator_model=generators.generator_model, judge=generators.judge, judge_model=generators.judge_model,
        format=data.format, split=data.hub_split(), max_pairs=data.max_pairs, seed=data.seed,
        cache_dir=data.cache_dir, generation_cache=generators.generation_cache, max_length=data.max_length,
        random_baseline=not output.no_random_baseline, settings=generators.reading(),
        output_dir=output.output_dir, overwrite=output.overwrite, endpoint_timeout=endpoint.endpoint_timeout)
    print(expert_table_markdown(result))
    print(f"Written to {written} and interpretation.md")
