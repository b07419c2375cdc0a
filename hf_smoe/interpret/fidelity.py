"""Checking a description (Eq. 19-20, App. A): the judge answers, for a stratified sample of an expert's prompts,
whether each shows the described feature, and description fidelity is the Pearson correlation between those YES/NO
judgments and the expert's routing weights. The same correlation on the judge's P(YES) is reported beside it: a
small judge often answers NO to everything (no variance to correlate, fidelity 0) while its P(YES) still ranks the
prompts.

The sample holds 100 prompts from the top 10% of the expert's weights and 100 from the other 90% (App. A).
"""

import torch

from ..metrics import description_fidelity, top_percent_count
from . import prompts
from .generators import TextGenerator

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
                       seed: int = 0, per_stratum: int = SAMPLES_PER_STRATUM,
                       judge_prompt: str = "paper") -> list[dict]:
    """Per expert: description fidelity (Eq. 19) of its description on its stratified sample of the distinct test
    `texts` (routing (M, K)), on the YES/NO answers and on P(YES), with the judgments; the judge reads the
    `judge_prompt` template (Fig. 5 by default). One expert's prompts are judged together, so a local judge
    runs the shared description once per batch."""
    generator = torch.Generator().manual_seed(seed)
    samples = [fidelity_sample(routing[:, k], generator, per_stratum) for k in range(routing.shape[1])]
    judgments = judge.judge([prompts.judge_prompt(description, texts[i], judge_prompt)
                             for description, (rows, _) in zip(descriptions, samples) for i in rows.tolist()])
    experts = torch.cat([torch.full((len(rows),), k) for k, (rows, _) in enumerate(samples)])
    weights = torch.cat([routing[rows, k] for k, (rows, _) in enumerate(samples)])
    fidelity, on_probability = fidelities(judgments, weights, experts, routing.shape[1])
    scored, start = [], 0
    for k, (rows, from_top) in enumerate(samples):
        own = judgments[start:start + len(rows)]
        start += len(rows)
        scored.append({"description_fidelity": fidelity[k], "fidelity_probability": on_probability[k],
                       "sample": rows.tolist(), "sample_from_top": from_top.tolist(),
                       "judgments": [j.answer for j in own],
                       "yes_probabilities": [j.probability for j in own],
                       "yes_rate_top": mean_or_none([j.answer for j, top in zip(own, from_top) if top]),
                       "yes_rate_rest": mean_or_none([j.answer for j, top in zip(own, from_top) if not top])})
    return scored


def fidelities(judgments: list, weights: torch.Tensor, experts: torch.Tensor, num_experts: int) -> tuple[list, list]:
    """(binary, probability): each expert's description fidelity (Eq. 19) on the YES/NO answers, then on P(YES). An
    expert with any judgment that has no probability (an endpoint without log-probabilities) gets None on P(YES)."""
    answers = torch.tensor([j.answer for j in judgments], dtype=torch.float64)
    unknown = torch.tensor([j.probability is None for j in judgments], dtype=torch.float64)
    probabilities = torch.tensor([j.probability if j.probability is not None else 0.0 for j in judgments],
                                 dtype=torch.float64)
    binary = description_fidelity(answers, weights, experts, num_experts, per_expert=True).tolist()
    on_probability = description_fidelity(probabilities, weights, experts, num_experts, per_expert=True).tolist()
    complete = torch.zeros(num_experts, dtype=torch.float64).index_add_(0, experts.long(), unknown) == 0
    return binary, [value if full else None for value, full in zip(on_probability, complete.tolist())]


def fidelity_means(experts: list) -> dict:
    """The mean over experts (Eq. 20) of both fidelities; the P(YES) one is None unless every expert has it."""
    on_probability = [expert["fidelity_probability"] for expert in experts]
    return {"description_fidelity": mean_or_none([expert["description_fidelity"] for expert in experts]),
            "fidelity_probability": None if None in on_probability else mean_or_none(on_probability)}


def mean_or_none(values) -> float | None:
    """The mean of `values`; None for none (a stratum or category without prompts has no rate)."""
    return sum(values) / len(values) if values else None
