"""Checking a description (Eq. 19-20, App. A): the judge answers, for a stratified sample of an expert's prompts,
whether each shows the described feature, and description fidelity is the Pearson correlation between those YES/NO
judgments and the expert's routing weights.

The sample holds 100 prompts from the top 10% of the expert's weights and 100 from the other 90% (App. A).
"""

import torch

from ..metrics import description_fidelity, top_percent_count
from .generators import TextGenerator
from .prompts import judge_prompt

SAMPLES_PER_STRATUM = 100  # test prompts judged from the top 10% and from the rest (App. A)
TOP_FRACTION = 0.1


def fidelity_sample(weights: torch.Tensor, generator: torch.Generator, per_stratum: int = SAMPLES_PER_STRATUM,
                    top_fraction: float = TOP_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, from_top) of App. A's stratified sample for one expert: `per_stratum` prompts drawn without
    replacement from the top `top_fraction` of its routing weights (ceil, ties to the lower index as in
    `metrics.top_examples`) and as many from the rest; a stratum with fewer prompts is taken whole."""
    order = torch.sort(weights, descending=True, stable=True).indices
    num_top = top_percent_count(len(weights), 100 * top_fraction)
    strata = (order[:num_top], order[num_top:])
    picked = [stratum[torch.randperm(len(stratum), generator=generator)[:per_stratum]] for stratum in strata]
    return torch.cat(picked), torch.cat([torch.ones(len(picked[0]), dtype=torch.bool),
                                         torch.zeros(len(picked[1]), dtype=torch.bool)])


def score_descriptions(judge: TextGenerator, descriptions: list, routing: torch.Tensor, texts: list,
                       seed: int = 0, per_stratum: int = SAMPLES_PER_STRATUM) -> list[dict]:
    """Per expert: description fidelity (Eq. 19) of its description on its stratified sample of the distinct test
    `texts` (routing (M, K)), with the judgments. One expert's prompts are judged together, so a local judge runs the
    shared description once per batch."""
    generator = torch.Generator().manual_seed(seed)
    samples = [fidelity_sample(routing[:, k], generator, per_stratum) for k in range(routing.shape[1])]
    judgments = judge.judge([judge_prompt(description, texts[i]) for description, (rows, _) in
                             zip(descriptions, samples) for i in rows.tolist()])
    experts = torch.cat([torch.full((len(rows),), k) for k, (rows, _) in enumerate(samples)])
    weights = torch.cat([routing[rows, k] for k, (rows, _) in enumerate(samples)])
    answers = torch.tensor([j.answer for j in judgments], dtype=torch.float64)
    fidelity = description_fidelity(answers, weights, experts, routing.shape[1], per_expert=True)
    scored, start = [], 0
    for k, (rows, from_top) in enumerate(samples):
        own = judgments[start:start + len(rows)]
        start += len(rows)
        scored.append({"description_fidelity": fidelity[k].item(), "sample": rows.tolist(),
                       "sample_from_top": from_top.tolist(), "judgments": [j.answer for j in own],
                       "yes_probabilities": [j.probability for j in own],
                       "yes_rate_top": mean_or_none([j.answer for j, top in zip(own, from_top) if top]),
                       "yes_rate_rest": mean_or_none([j.answer for j, top in zip(own, from_top) if not top])})
    return scored


def mean_or_none(values) -> float | None:
    """The mean of `values`; None for none (a stratum or category without prompts has no rate)."""
    return sum(values) / len(values) if values else None
