"""How the experts are read: the choices `smoe interpret`, Table 4 and Fig. 6 share, in one frozen record that the
pipeline passes down whole and every results file stores."""

from dataclasses import asdict, dataclass

from ..errors import InputError
from .fidelity import SAMPLES_PER_STRATUM
from .prompts import describer_template, judge_template

TOP_EXAMPLES = 20  # describing prompts shown to the describer (§6.1)


@dataclass(frozen=True)
class ReadingSettings:
    """How each expert is described and each description judged.

    The defaults are the ones measured best with small offline models (docs/results.md); `paper()` gives the paper's
    own protocol.

    Args:
        describer_prompt: the describer's template (`prompts.DESCRIBER_PROMPTS`): "short" or "paper" (Fig. 4).
        judge_prompt: the judge's template (`prompts.JUDGE_PROMPTS`): "question" or "paper" (Fig. 5).
        calibrate_threshold: choose each description's YES threshold on P(YES) on the describing split instead of
            the judge's own 0.5.
        candidates: descriptions written per expert (the greedy one, then seeded samples); with more than one, the
            one with the best fidelity on a sample of the describing split is kept, then measured on the other.
        top_n: top-routed describing prompts shown to the describer.
        per_stratum: prompts judged per stratum of App. A's fidelity sample (top 10%, rest).
    """

    describer_prompt: str = "short"
    judge_prompt: str = "question"
    calibrate_threshold: bool = True
    candidates: int = 1
    top_n: int = TOP_EXAMPLES
    per_stratum: int = SAMPLES_PER_STRATUM

    def __post_init__(self):
        describer_template(self.describer_prompt)
        judge_template(self.judge_prompt)
        for name in ("candidates", "top_n", "per_stratum"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name}: must be a whole number >= 1, got {getattr(self, name)!r}.")

    @classmethod
    def paper(cls, **changes) -> "ReadingSettings":
        """The paper's protocol: Fig. 4 and Fig. 5 word for word, the judge's own YES threshold, one description."""
        return cls(**{"describer_prompt": "paper", "judge_prompt": "paper", "calibrate_threshold": False} | changes)

    def to_dict(self) -> dict:
        return asdict(self)
