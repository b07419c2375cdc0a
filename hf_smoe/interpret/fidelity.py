"""Checking a description (Eq. 19-20, App. A): the judge answers, for a stratified sample of an expert's prompts,
whether each shows the described feature, and description fidelity is the Pearson correlation between those YES/NO
judgments and the expert's routing weights. The same correlation on the judge's P(YES) is reported beside it: a
small judge often answers NO to everything (no variance to correlate, fidelity 0) while its P(YES) still ranks the
prompts. With calibration, each description's YES threshold on P(YES) is chosen on a sample of the *describing*
split (`calibrated_threshold`), never on the measuring one, and the binary answers are P(YES) at that threshold.

The sample holds 100 prompts from the top 10% of the expert's weights and 100 from the other 90% (App. A).
"""

import warnings

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


def judge_samples(judge: TextGenerator, descriptions: list, routing: torch.Tensor, texts: list, seed: int,
                  per_stratum: int, judge_prompt: str) -> tuple[list, list, torch.Tensor, torch.Tensor]:
    """(samples, judgments, experts, weights): each expert's stratified sample of the distinct `texts` (routing
    (M, K), seeded) and the judge's reading of its description on it, flattened in expert order. One expert's prompts
    are judged together, so a local judge runs the shared description once per batch."""
    generator = torch.Generator().manual_seed(seed)
    samples = [fidelity_sample(routing[:, k], generator, per_stratum) for k in range(routing.shape[1])]
    judgments = judge.judge([prompts.judge_prompt(description, texts[i], judge_prompt)
                             for description, (rows, _) in zip(descriptions, samples) for i in rows.tolist()])
    experts = torch.cat([torch.full((len(rows),), k) for k, (rows, _) in enumerate(samples)])
    weights = torch.cat([routing[rows, k] for k, (rows, _) in enumerate(samples)])
    return samples, judgments, experts, weights


def score_descriptions(judge: TextGenerator, descriptions: list, routing: torch.Tensor, texts: list,
                       seed: int = 0, per_stratum: int = SAMPLES_PER_STRATUM, judge_prompt: str = "paper",
                       calibration: tuple[torch.Tensor, list] | None = None) -> list[dict]:
    """Per expert: description fidelity (Eq. 19) of its description on its stratified sample of the distinct test
    `texts` (routing (M, K)), on the YES/NO answers and on P(YES), with the judgments; the judge reads the
    `judge_prompt` template (Fig. 5 by default). With `calibration` (the describing split's routing and texts), each
    description is first judged on its stratified sample there and its YES threshold t_k chosen on it
    (`calibrated_threshold`); the binary answers, fidelity and YES rates are then those of P(YES) >= t_k, recorded
    as `threshold` (unchanged, with a warning, when the judge gives no probabilities)."""
    thresholds = None if calibration is None else describing_thresholds(judge, descriptions, *calibration, seed,
                                                                        per_stratum, judge_prompt)
    samples, judgments, experts, weights = judge_samples(judge, descriptions, routing, texts, seed, per_stratum,
                                                         judge_prompt)
    answers = binary_answers(judgments, None if thresholds is None else torch.tensor(thresholds)[experts])
    fidelity, on_probability = fidelities(judgments, weights, experts, routing.shape[1], answers)
    scored, start = [], 0
    for k, (rows, from_top) in enumerate(samples):
        own, said = judgments[start:start + len(rows)], answers[start:start + len(rows)].bool().tolist()
        start += len(rows)
        scored.append({"description_fidelity": fidelity[k], "fidelity_probability": on_probability[k],
                       "sample": rows.tolist(), "sample_from_top": from_top.tolist(), "judgments": said,
                       "yes_probabilities": [j.probability for j in own],
                       "yes_rate_top": mean_or_none([a for a, top in zip(said, from_top) if top]),
                       "yes_rate_rest": mean_or_none([a for a, top in zip(said, from_top) if not top])})
        if thresholds is not None:
            scored[-1]["threshold"] = thresholds[k]
    return scored


def describing_thresholds(judge: TextGenerator, descriptions: list, routing: torch.Tensor, texts: list, seed: int,
                          per_stratum: int, judge_prompt: str) -> list | None:
    """Each description's calibrated YES threshold on its stratified sample (App. A's rule, seeded) of the
    describing split (routing (M, K) over its distinct `texts`), the routing weights as targets."""
    _, judgments, experts, weights = judge_samples(judge, descriptions, routing, texts, seed, per_stratum,
                                                   judge_prompt)
    return group_thresholds(judgments, weights, experts, routing.shape[1])


def group_thresholds(judgments: list, targets: torch.Tensor, groups: torch.Tensor, num_groups: int) -> list | None:
    """`calibrated_threshold` of each group's judgments against its `targets`; None, with one warning, when a
    judgment has no P(YES) (an endpoint without log-probabilities): the judge's own answers are kept then."""
    probabilities = yes_probabilities(judgments)
    if probabilities is None:
        warnings.warn("calibrate_threshold: the judge gives no P(YES), so no threshold can be calibrated; its own "
                      "YES/NO answers (threshold 0.5) are used.", stacklevel=3)
        return None
    return [calibrated_threshold(probabilities[groups == g], targets[groups == g]) for g in range(num_groups)]


def calibrated_threshold(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """The YES threshold t on P(YES) that maximizes the binary description fidelity (Eq. 19) of the answers
    `probabilities >= t` against `targets` (routing weights, or category membership) on a calibration sample.

    Candidates: the midpoints between consecutive distinct observed probabilities, plus the two ends (the smallest
    value: every answer YES; the next float above the largest: every answer NO). Ties go to the threshold closest to
    0.5, the judge's own, so a sample that cannot tell thresholds apart leaves the judge's threshold nearly as is;
    an empty sample keeps 0.5."""
    if not len(probabilities):
        return 0.5
    values = torch.unique(probabilities.double())
    upper = torch.nextafter(values[-1:], torch.tensor([float("inf")], dtype=torch.float64))
    candidates = torch.cat([values[:1], (values[1:] + values[:-1]) / 2, upper])
    answers = (probabilities.double()[None, :] >= candidates[:, None]).double()
    groups = torch.arange(len(candidates)).repeat_interleave(len(probabilities))
    scores = description_fidelity(answers.flatten(), targets.double().repeat(len(candidates)), groups,
                                  len(candidates), per_expert=True)
    best = torch.isclose(scores, scores.max(), rtol=0.0, atol=1e-12)
    distance = torch.where(best, (candidates - 0.5).abs(), torch.tensor(float("inf"), dtype=torch.float64))
    return candidates[distance.argmin()].item()


def binary_answers(judgments: list, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """The YES/NO answers as 0/1: the judge's own, or P(YES) >= each judgment's threshold when given."""
    if thresholds is None:
        return torch.tensor([j.answer for j in judgments], dtype=torch.float64)
    return (yes_probabilities(judgments) >= thresholds.double()).double()


def yes_probabilities(judgments: list) -> torch.Tensor | None:
    """The judgments' P(YES) as one tensor; None when any judgment has none (an endpoint without log-probabilities)."""
    if any(judgment.probability is None for judgment in judgments):
        return None
    return torch.tensor([judgment.probability for judgment in judgments], dtype=torch.float64)


def fidelities(judgments: list, weights: torch.Tensor, experts: torch.Tensor, num_experts: int,
               answers: torch.Tensor | None = None) -> tuple[list, list]:
    """(binary, probability): each expert's description fidelity (Eq. 19) on the YES/NO answers (the judge's own, or
    `answers` (N,) 0/1), then on P(YES). An expert with any judgment that has no probability (an endpoint without
    log-probabilities) gets None on P(YES)."""
    answers = binary_answers(judgments) if answers is None else answers
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
