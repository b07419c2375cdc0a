"""What the describer and the judge need from a language model, and how a YES/NO answer is read.

The interpretation pipeline asks a language model for two things: write a text for a prompt (the describer, Fig. 4)
and answer YES or NO with a probability (the judge, Fig. 5). `TextGenerator` is exactly that interface; every backend
(`local`, `endpoint`) implements it, and `cache` wraps any of them. The reading of an answer (`yes_probability`,
`parse_yes_no`) is shared by the backends, so one answer means the same whichever model gave it.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

# Sampled answers (a describer's further candidates and retries): the temperature and nucleus most chat models ship
# as their own defaults, so a sample stays fluent while differing from the greedy answer.
SAMPLING = {"temperature": 0.7, "top_p": 0.95}

# Surface forms of the two answers whose next-token probabilities are pooled: small models often write "Yes" or
# " YES" instead of the exact token the prompt asks for, and those mean the same thing.
ANSWER_FORMS = {"YES": ("YES", "Yes", "yes", " YES", " Yes", " yes"), "NO": ("NO", "No", "no", " NO", " No", " no")}


@dataclass(frozen=True)
class Judgment:
    """One YES/NO answer of a judge.

    Args:
        answer: the binary judgment z (True = YES).
        probability: P(YES) / (P(YES) + P(NO)) from the judge's next-token distribution, or None when it is not
            known (an endpoint that returns no log-probabilities).
        raw: what the judge said (the text an endpoint returned, or the more probable answer of a local model).
    """

    answer: bool
    probability: float | None
    raw: str


class TextGenerator(ABC):
    """What the describer and the judge need from a language model. `identity` names the model and its decoding
    settings: two generators with the same identity give the same answers, so the cache may share them."""

    identity: str

    @abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        """The model's answer to each prompt (sent as one user message), without the prompt: greedy, or sampled
        (`SAMPLING`) with `seed` so a rerun gives the same samples."""

    @abstractmethod
    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        """The model's YES/NO answer to each prompt (sent as one user message), with its probability."""


def yes_probability(log_probs: dict) -> float | None:
    """P(YES) / (P(YES) + P(NO)) from a map of answer text -> log-probability (the forms in `ANSWER_FORMS`); None
    when neither answer appears."""
    mass = {answer: sum(math.exp(log_probs[form]) for form in forms if form in log_probs)
            for answer, forms in ANSWER_FORMS.items()}
    total = mass["YES"] + mass["NO"]
    return mass["YES"] / total if total > 0 else None


def parse_yes_no(text: str) -> bool:
    """The answer a judge wrote: YES when its first word is yes (any case, punctuation ignored), else NO — a judge
    that answers neither has not said the example clearly matches (Fig. 5's decision rule)."""
    words = text.strip().split()
    return bool(words) and words[0].strip(".,:;!\"'*()[]").upper() == "YES"
