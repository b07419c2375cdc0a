"""Checks of the judge itself: how much of the description fidelity it lets any model reach, measured on prompts
whose feature is known. A judge that misreads plain, hand-written descriptions caps every model's fidelity."""

import torch

from ..metrics import description_fidelity
from .fidelity import mean_or_none
from .generators import TextGenerator
from .prompts import judge_prompt


def judge_agreement(judge: TextGenerator, texts: list, categories: list, descriptions: dict) -> dict:
    """How well the judge itself reads a known feature: each category's hand-written `descriptions[category]`
    against every prompt of `texts` (categories known). Returns the YES rate of each description on each category
    and `ideal_fidelity`: the description fidelity (Eq. 19-20) an ideal router would get with this judge, one expert
    per category routing exactly its category's prompts (weight 1, else 0). 1.0 means the judge says YES to exactly
    the right prompts; the gap below 1 is what the judge alone costs every model's fidelity."""
    names = sorted(descriptions)
    judgments = judge.judge([judge_prompt(descriptions[name], text) for name in names for text in texts])
    answers = torch.tensor([j.answer for j in judgments], dtype=torch.float64).view(len(names), len(texts))
    membership = torch.tensor([[category == name for category in categories] for name in names], dtype=torch.float64)
    experts = torch.arange(len(names)).repeat_interleave(len(texts))
    fidelity = description_fidelity(answers.flatten(), membership.flatten(), experts, len(names), per_expert=True)
    yes_rates = {name: {category: mean_or_none(answers[i, [c == category for c in categories]].tolist())
                        for category in sorted(set(categories))} for i, name in enumerate(names)}
    return {"descriptions": descriptions, "yes_rates": yes_rates, "ideal_fidelity": fidelity.mean().item(),
            "ideal_fidelity_per_category": dict(zip(names, fidelity.tolist())), "prompts": len(texts)}
