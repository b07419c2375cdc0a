"""HelpSteer2 (MiCRo App. B.2): responses rated 0-4 on five attributes, two responses per prompt."""

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator

from datasets import Dataset

from ..schema import Skip, attribute_pair, read_score, read_text, user_turn

# The five rated attributes and the context sentence MiCRo gives each (MiCRo Table 6).
HELPSTEER2_CRITERIA = {
    "helpfulness": "The assistant should provide users with accurate, relevant, and up-to-date information, ensuring "
                   "that the content is positive, engaging, educational, and truly helpful.",
    "correctness": "The assistant must base responses on verified facts and cover all aspects of the prompt "
                   "fully\u2014avoiding errors, omissions, hallucinations, or irrelevant details.",
    "coherence": "The assistant's responses should be logically structured, easy to follow, and free of "
                 "contradictions, redundancies, or abrupt style shifts.",
    "complexity": "The assistant should employ sophisticated language with elevated vocabulary, appropriate for "
                  "adults with advanced education or subject matter experts.",
    "verbosity": "The assistant should provide an expansive, detailed response that thoroughly elaborates on the "
                 "topic, including additional context and examples beyond the basic answer.",
}
COLUMNS = ("prompt", "response", *HELPSTEER2_CRITERIA)


def pairs(dataset: Dataset, *, append_criterion: bool = False, drop_unanimous: bool = False) -> Iterator[dict | Skip]:
    """Every two responses to the same prompt give, per attribute, a pair whose chosen response has the higher rating.

    Equal ratings give no pair (counted), nor does a missing (null or NaN) rating. `drop_unanimous=True` drops
    response pairs where one response is rated strictly higher on all five attributes (MiCRo does so for its training
    set only; a pair with a missing rating is never unanimous). The criterion is MiCRo's Table 6 context, appended to
    the prompt only with `append_criterion=True` (MiCRo trains its mixture on the bare prompts and uses the contexts
    for routing). Multi-turn prompts stay one user message, as HelpSteer2 stores them.
    """
    responses = defaultdict(list)
    for index, record in enumerate(dataset):
        ratings = {attribute: read_score(record[attribute], index, attribute) for attribute in HELPSTEER2_CRITERIA}
        responses[read_text(record["prompt"], index, "prompt")].append(
            (read_text(record["response"], index, "response"), ratings))
    for prompt, candidates in responses.items():
        for (first, first_ratings), (second, second_ratings) in itertools.combinations(candidates, 2):
            differences = {name: None if first_ratings[name] is None or second_ratings[name] is None
                           else first_ratings[name] - second_ratings[name] for name in HELPSTEER2_CRITERIA}
            if drop_unanimous and _unanimous(differences.values()):
                yield Skip("response pairs rated unanimously on every attribute")
                continue
            for attribute, difference in differences.items():
                if difference is None or math.isnan(difference):  # inf - inf is NaN
                    yield Skip("attribute pairs with a missing (null or NaN) rating")
                    continue
                if difference == 0:
                    yield Skip("attribute pairs with equal ratings")
                    continue
                chosen, rejected = (first, second) if difference > 0 else (second, first)
                yield attribute_pair(user_turn(prompt), chosen, rejected, attribute, HELPSTEER2_CRITERIA[attribute],
                                     append_criterion)


def _unanimous(differences) -> bool:
    """Whether one response is rated strictly higher on every attribute (never, with a rating missing)."""
    signs = {None if difference is None else (difference > 0) - (difference < 0) for difference in differences}
    return signs in ({1}, {-1})
