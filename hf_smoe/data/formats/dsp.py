"""Domain-Specific Preference (DSP): each query answered in the style of four domains and a `normal` one."""

from collections.abc import Iterator

from datasets import Dataset

from ...errors import InputError
from ..schema import Skip, attribute_pair, read_text, user_turn

COLUMNS = ("query", "responses")
# Under domain d the response written for d is preferred over the other four (the `normal` response included).
# The papers give no criterion sentences for DSP; these state each domain's style in the manner of MiCRo's contexts.
DSP_CRITERIA = {
    "academy": "The response should be written in an academic style: rigorous, precise and well-structured, as in "
               "a scholarly text.",
    "business": "The response should be written in a business style: professional, practical and focused on "
                "commercial value.",
    "entertainment": "The response should be written in an entertaining style: lively, humorous and engaging.",
    "literature": "The response should be written in a literary and artistic style: expressive, imaginative and "
                  "rich in figurative language.",
}
DSP_RESPONSES = (*DSP_CRITERIA, "normal")


def pairs(dataset: Dataset, *, append_criterion: bool = True) -> Iterator[dict | Skip]:
    """The domain is the attribute (and the category): under domain d the response for d is preferred over each of
    the other four, so a query gives 4 domains x 4 = 16 pairs, in the order of `DSP_RESPONSES`. The criterion is
    `DSP_CRITERIA[d]`, appended to the prompt unless `append_criterion=False` (without it a query's pairs under two
    domains contradict each other)."""
    for index, record in enumerate(dataset):
        prompt = user_turn(read_text(record["query"], index, "query"))
        responses = record["responses"]
        if not isinstance(responses, dict):
            raise InputError(f"record {index}: field 'responses' must map each domain to its response, got "
                             f"{type(responses).__name__}.")
        texts = {name: read_text(responses.get(name), index, f"responses.{name}") for name in DSP_RESPONSES}
        for domain, criterion in DSP_CRITERIA.items():
            for other in DSP_RESPONSES:
                if other != domain:
                    yield attribute_pair(prompt, texts[domain], texts[other], domain, criterion, append_criterion)
