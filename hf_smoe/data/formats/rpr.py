"""RPR (Pitis et al. 2024; paper App. A): two responses, each preferred under its own stated criterion."""

from collections.abc import Iterator

from datasets import Dataset

from ..schema import Skip, attribute_pair, read_text, user_turn

COLUMNS = ("prompt", "response_a", "response_b", "criteria_x", "criteria_y", "category_x", "category_y")
# The 17 attributes with more than 50 test examples, on which steering and personalization are evaluated (paper
# App. A). Select them with `pairs.filter(lambda a: a in RPR_EVALUATION_ATTRIBUTES, input_columns="attribute")`.
RPR_EVALUATION_ATTRIBUTES = (
    "Linguistic Creativity", "User Friendliness", "Humor and Entertainment Value", "Scientific Rigor",
    "Narrative and Storytelling Quality", "Creativity and Originality", "Factual Accuracy", "Innovativeness",
    "Pedagogical Effectiveness", "Economic Feasibility", "Technical Complexity", "Interdisciplinary Approach",
    "Empathy and Emotional Intelligence", "Contextual Relevance", "Clarity and Conciseness", "User Experience",
    "Practical Application",
)


def pairs(dataset: Dataset, *, append_criterion: bool = True) -> Iterator[dict | Skip]:
    """`response_a` is preferred under `criteria_x` (attribute `category_x`), `response_b` under `criteria_y`
    (attribute `category_y`). Each record becomes these two attribute-conditioned pairs; the criterion is appended to
    the prompt (the paper's training input) unless `append_criterion=False` (its steering evaluation, which removes
    it). The evaluation attributes are `RPR_EVALUATION_ATTRIBUTES`."""
    for index, record in enumerate(dataset):
        prompt = user_turn(read_text(record["prompt"], index, "prompt"))
        a = read_text(record["response_a"], index, "response_a")
        b = read_text(record["response_b"], index, "response_b")
        for chosen, rejected, side in ((a, b, "x"), (b, a, "y")):
            attribute = read_text(record[f"category_{side}"], index, f"category_{side}")
            criterion = read_text(record[f"criteria_{side}"], index, f"criteria_{side}")
            yield attribute_pair(prompt, chosen, rejected, attribute, criterion, append_criterion)
