"""Language models behind the describer and the judge: one interface (`base`), one module per backend (`local`
transformers models, OpenAI-compatible `endpoint`s), a disk `cache` in front of any of them, and `loading`, which
turns a command-line spec into a cached generator. The interpretation pipeline sees only `TextGenerator`, so a new
backend is a module here and a branch in `loading`, and nothing above changes.
"""

from .base import ANSWER_FORMS, Judgment, TextGenerator, parse_yes_no, yes_probability
from .cache import CachedGenerator
from .endpoint import EndpointGenerator
from .loading import (judge_spec, load_describer_and_judge, load_generator, load_judge, local_generator_source,
                      offline_generators)
from .local import LocalGenerator, as_chat

__all__ = ["ANSWER_FORMS", "CachedGenerator", "EndpointGenerator", "Judgment", "LocalGenerator", "TextGenerator",
           "as_chat", "judge_spec", "load_describer_and_judge", "load_generator", "load_judge",
           "local_generator_source", "offline_generators", "parse_yes_no", "yes_probability"]
