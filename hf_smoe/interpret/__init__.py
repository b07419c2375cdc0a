"""Reading the experts (§6.1, App. A, Fig. 4-5): an LLM describes each expert from its top-routed prompts, an LLM
judge checks each description on held-out prompts, and description fidelity scores the match. The room sits above
evaluation and the hub (it reads a checkpoint's routing and writes the expert table into its card) and owns every
use of a text-generating model: `prompts` (Fig. 4 and 5), `describe` (the pipeline over a head), `fidelity` (the
App. A measurement), `distinctive_words` (an expert's words, no LLM), `settings` (how experts are read),
`judge_checks` (how far the judge can be trusted), `checkpoint` (`smoe interpret`) and
`generators` (the language models behind describer and judge).
"""

from .checkpoint import check_checkpoint_judge, expert_descriptions, expert_table_markdown, interpret_checkpoint
from .describe import distinct_prompts, distinct_prompts_and_categories, interpret_head, routing_by_prompt
from .fidelity import SAMPLES_PER_STRATUM, fidelity_means, score_descriptions
from .generators import (LocalGenerator, TextGenerator, load_describer_and_judge, local_generator_source,
                         offline_generators)
from .judge_checks import CHECK_PROMPTS_PER_CATEGORY, judge_agreement, judge_check_markdown
from .prompts import judge_prompt, prompt_text
from .settings import ReadingSettings

__all__ = ["CHECK_PROMPTS_PER_CATEGORY", "LocalGenerator", "ReadingSettings", "SAMPLES_PER_STRATUM", "TextGenerator",
           "check_checkpoint_judge", "distinct_prompts", "distinct_prompts_and_categories", "expert_descriptions",
           "expert_table_markdown", "fidelity_means", "interpret_checkpoint", "interpret_head", "judge_agreement",
           "judge_check_markdown", "judge_prompt", "load_describer_and_judge", "local_generator_source",
           "offline_generators", "prompt_text", "routing_by_prompt", "score_descriptions"]
