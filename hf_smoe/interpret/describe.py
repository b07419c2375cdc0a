"""Reading the experts (§6.1, App. A, Fig. 4): describe each expert in one line, then check the description.

For each expert, an LLM (the *describer*) reads the expert's 20 highest-routing-weight validation prompts and names
their common feature (Fig. 4's prompt); `fidelity` then measures how well the judge's reading of that description
follows the expert's routing weights on test prompts. The random baseline describes each expert from shuffled prompts
with the router kept fixed. Everything runs on cached features: the router needs only the prompt representations.

The unit here is a distinct prompt: routing depends only on the prompt, so a prompt shared by several pairs counts
once, both among the top examples and in the fidelity sample.
"""

import math
import warnings

import torch

from ..errors import InputError
from ..evaluation import head_outputs
from ..features import as_training_features
from ..metrics import expert_specialization_top, pairwise_accuracy, top_examples, top_percent_count
from ..modeling.modeling_smoe import mixture_reward
from .distinctive_words import distinctive_words
from .fidelity import SAMPLES_PER_STRATUM, TOP_FRACTION, fidelity_means, mean_or_none, score_descriptions
from .generators import TextGenerator
from .prompts import describer_prompt, description_problem, parse_description, prompt_text
from .settings import ReadingSettings

DESCRIPTION_TOKENS = 48
ATTEMPTS = 3  # answers asked per description: the first, then seeded samples while an answer does not describe


def distinct_prompts(prompts) -> tuple[list, list]:
    """(texts, rows): each distinct prompt's text once, with the row of its first pair."""
    first = {}
    for row, prompt in enumerate(prompts):
        first.setdefault(prompt_text(prompt), row)
    return list(first), list(first.values())


def distinct_prompts_and_categories(features) -> tuple[list, list]:
    """(texts, categories): each distinct prompt's text once, with the category of its first pair (features with
    `prompt` and `category` columns)."""
    texts, rows = distinct_prompts(features["prompt"])
    return texts, [features[row]["category"] for row in rows]


def describe_experts(describer: TextGenerator, routing: torch.Tensor, texts: list,
                     settings: ReadingSettings = ReadingSettings(), *, judge: TextGenerator | None = None,
                     seed: int = 0) -> list[dict]:
    """Per expert: its top prompts (by routing weight over the distinct `texts`, routing (M, K)), its description
    with the describer's raw answer, and its distinctive words (`distinctive_words`, no LLM).

    Each description is checked (`prompts.description_problem`) and asked again, sampled with a seed, while it copies
    the instructions or a prompt, or answers a prompt instead of describing (at most `ATTEMPTS` answers; the last one
    is kept otherwise, its `problem` recorded). With `settings.candidates` > 1, that many descriptions are written
    per expert (the greedy one, then seeded samples) and `judge` scores each on a sample of these same describing
    prompts; the best fidelity among those that describe is kept (`candidates` lists them all)."""
    top = top_examples(routing, settings.top_n).tolist()  # (K, n)
    shown = [[texts[i] for i in rows] for rows in top]
    requests = [describer_prompt(examples, settings.describer_prompt) for examples in shown]
    written = [checked_descriptions(describer, requests, shown, settings.describer_prompt, seed, candidate)
               for candidate in range(settings.candidates)]  # (candidates, K)
    words = distinctive_words(texts, routing, min_top=settings.top_n)
    experts = []
    for k, examples in enumerate(shown):
        experts.append({**written[0][k], "distinctive_words": words[k], "top_examples": examples})
    if settings.candidates > 1:
        if judge is None:
            raise ValueError("describe_experts: choosing among candidates needs a judge.")
        choose_candidates(experts, written, judge, routing, texts, settings, seed)
    return experts


def checked_descriptions(describer: TextGenerator, requests: list, shown: list, variant: str, seed: int,
                         candidate: int) -> list[dict]:
    """One description per request, each asked again (sampled, seeded by `seed`, `candidate` and the attempt) while
    `description_problem` finds one; candidate 0 starts from the greedy answer."""
    found = [None] * len(requests)
    for attempt in range(ATTEMPTS):
        waiting = [k for k, entry in enumerate(found) if entry is None or entry["problem"]]
        if not waiting:
            break
        sample = None if candidate == attempt == 0 else (seed * 1000 + candidate) * ATTEMPTS + attempt
        answers = describer.generate([requests[k] for k in waiting], max_new_tokens=DESCRIPTION_TOKENS, seed=sample)
        for k, answer in zip(waiting, answers):
            description, followed = parse_description(answer)
            found[k] = {"description": description, "followed_format": followed, "raw_output": answer,
                        "problem": description_problem(description, shown[k], variant), "attempts": attempt + 1}
    return found


def choose_candidates(experts: list, written: list, judge: TextGenerator, routing: torch.Tensor, texts: list,
                      settings: ReadingSettings, seed: int) -> None:
    """Keep, per expert, the candidate description with the best fidelity (on P(YES) when the judge gives it, else
    on YES/NO) on its stratified sample of the describing prompts; one that describes beats one that does not, and
    ties go to the earlier candidate. Never measured on the measuring prompts."""
    scores = [score_descriptions(judge, [entry["description"] for entry in candidate], routing, texts, seed,
                                 settings.per_stratum, settings.judge_prompt) for candidate in written]
    for k, expert in enumerate(experts):
        options = []
        for c, (candidate, score) in enumerate(zip(written, scores)):
            value = score[k]["fidelity_probability"]
            value = score[k]["description_fidelity"] if value is None else value
            options.append({"description": candidate[k]["description"], "problem": candidate[k]["problem"],
                            "describing_fidelity": value})
        best = max(range(len(options)), key=lambda c: (options[c]["problem"] is None,
                                                        known_or_lowest(options[c]["describing_fidelity"]), -c))
        expert.update(written[best][k], candidate=best, candidates=options)


def known_or_lowest(value: float | None) -> float:
    """A fidelity to rank by: an unknown one (None or NaN, a judge with no variance) ranks last."""
    return -math.inf if value is None or math.isnan(value) else value


def describing_rate(experts: list) -> float:
    """The share of experts whose kept description describes (no `problem`)."""
    return mean_or_none([expert["problem"] is None for expert in experts])


def interpret_experts(describer: TextGenerator, judge: TextGenerator, describe_routing: torch.Tensor,
                      describe_texts: list, measure_routing: torch.Tensor, measure_texts: list, *, seed: int = 0,
                      random_baseline: bool = True, settings: ReadingSettings = ReadingSettings()) -> dict:
    """Descriptions from the describing prompts (validation), fidelity on the measuring prompts (test), and the random
    baseline: the describer sees the describing prompts shuffled (seeded) while the router's weights stay as they
    are, so each expert is described from prompts unrelated to it. Routing (M, K) over distinct prompt texts; how
    experts are described and judged is `settings` (with `calibrate_threshold`, each description's YES threshold is
    chosen on a sample of the describing prompts, `score_descriptions`).

    Returns {"experts": [...], "description_fidelity": mean over experts (Eq. 20), "fidelity_probability": the same
    on the judge's P(YES) (None when the judge gives no probabilities), "describing_rate": the share of descriptions
    that describe, "routing_share": mean routing weight of each expert over the measuring prompts, "random_baseline":
    {...} (when asked), "settings": `settings` as a dict, "notes": [...] (what a small set could not give)}.
    """
    check_prompt_counts(len(describe_texts), len(measure_texts))
    unrouted = constant_experts(torch.cat([describe_routing, measure_routing]))
    calibration = (describe_routing, describe_texts) if settings.calibrate_threshold else None

    def described_and_scored(texts: list) -> list:
        experts = describe_experts(describer, describe_routing, texts, settings, judge=judge, seed=seed)
        scores = score_descriptions(judge, [e["description"] for e in experts], measure_routing, measure_texts, seed,
                                    settings.per_stratum, settings.judge_prompt, calibration)
        for expert, score in zip(experts, scores):
            expert.update(score)
        return experts

    experts = described_and_scored(describe_texts)
    share = measure_routing.float().mean(dim=0).tolist()
    for k, expert in enumerate(experts):
        expert.update(expert=k, routing_share=share[k])
    result = {"experts": experts, **fidelity_means(experts), "describing_rate": describing_rate(experts),
              "routing_share": share, "settings": settings.to_dict(),
              "notes": sample_notes(len(describe_texts), len(measure_texts), settings.top_n, settings.per_stratum)
              + unrouted_notes(unrouted)}
    if random_baseline:
        shuffled = torch.randperm(len(describe_texts), generator=torch.Generator().manual_seed(seed)).tolist()
        baseline = described_and_scored([describe_texts[i] for i in shuffled])
        result["random_baseline"] = {"experts": baseline, **fidelity_means(baseline),
                                     "describing_rate": describing_rate(baseline)}
    return result


def check_prompt_counts(num_describe: int, num_measure: int) -> None:
    """Refuses halves too small to read an expert: none to describe from, or fewer than 2 prompts to correlate the
    judge's answers with the routing on."""
    if num_describe < 1 or num_measure < 2:
        raise InputError(f"dataset: {num_describe} distinct describing and {num_measure} distinct measuring prompts; "
                         "experts are described on one half of the distinct prompts and measured on the other, which "
                         "needs at least 1 and 2: give data with more distinct prompts.")


def constant_experts(routing: torch.Tensor) -> list:
    """The experts whose routing weight is the same for every prompt (routing (M, K)): no prompt is routed to them
    more than another, so they have nothing to describe. All of them (one expert, static routing) is an error."""
    constant = ((routing.max(dim=0).values - routing.min(dim=0).values) == 0).nonzero().flatten().tolist()
    if len(constant) == routing.shape[1]:
        raise InputError("checkpoint: every expert gets the same routing weight for every prompt (one expert, or "
                         "static routing), so no expert can be read from the prompts routed to it; interpret a "
                         "checkpoint with a prompt-dependent router and K >= 2 (presets vanilla, micro, sparse).")
    if constant:
        warnings.warn(unrouted_notes(constant)[0], stacklevel=3)
    return constant


def unrouted_notes(experts: list) -> list[str]:
    """What a result of experts with constant routing weights means, in words."""
    if not experts:
        return []
    return [f"expert(s) {', '.join(map(str, experts))} get the same routing weight for every prompt (no prompt is "
            "routed to them more than to another): their descriptions come from arbitrary prompts and their fidelity "
            "is 0 by definition (Eq. 19's edge case)."]


def sample_notes(num_describe: int, num_measure: int, top_n: int, per_stratum: int) -> list[str]:
    """What a small set changes in the protocol, in words (an empty list when the set is large enough)."""
    notes = []
    if num_describe < top_n:
        notes.append(f"only {num_describe} distinct describing prompts: each expert is described from all of them, "
                     f"ranked (the paper shows {top_n}).")
    num_top = top_percent_count(num_measure, 100 * TOP_FRACTION)
    if num_top < per_stratum or num_measure - num_top < per_stratum:
        notes.append(f"only {num_measure} distinct measuring prompts: each fidelity sample holds "
                     f"{min(num_top, per_stratum)} from the top 10% and {min(num_measure - num_top, per_stratum)} from "
                     f"the rest ({per_stratum} + {per_stratum} asked; App. A: {SAMPLES_PER_STRATUM} + "
                     f"{SAMPLES_PER_STRATUM}).")
    return notes


def routing_by_prompt(head, features) -> tuple[torch.Tensor, list]:
    """(routing (M, K), texts) of the distinct prompts of `features` (pair features with a `prompt` column)."""
    texts, rows = distinct_prompts(features["prompt"])
    outputs = head_outputs(head, as_training_features(features.select(rows)))
    return outputs["routing_weights"].float().cpu(), texts


def interpret_head(head, describing, measuring, describer: TextGenerator, judge: TextGenerator, *, seed: int = 0,
                   random_baseline: bool = True, settings: ReadingSettings = ReadingSettings()) -> dict:
    """`interpret_experts` for a trained head on two sets of pair features with a `prompt` column: experts are
    described from `describing` (validation) and measured on `measuring` (test), where each expert's top-10% expert
    specialization (Eq. 12, on the measuring pairs) is added beside its fidelity, and the mixture's accuracy. The
    random baseline's specialization shuffles the measuring pairs against the fixed routing weights, as its
    describer sees shuffled prompts (the paper's Table 4 reports both for its random row)."""
    result = interpret_experts(describer, judge, *routing_by_prompt(head, describing),
                               *routing_by_prompt(head, measuring), seed=seed, random_baseline=random_baseline,
                               settings=settings)
    outputs = {k: v.cpu() for k, v in head_outputs(head, as_training_features(measuring)).items()}
    chosen, rejected, routing = (outputs["chosen_expert_rewards"], outputs["rejected_expert_rewards"],
                                 outputs["routing_weights"])
    specialization = expert_specialization_top(chosen, rejected, routing, per_expert=True)
    for expert, value in zip(result["experts"], specialization.tolist()):
        expert["expert_specialization"] = value
    result["expert_specialization"] = specialization.nanmean().item()
    if random_baseline:  # the same shuffle for specialization: each routing row meets another pair's rewards
        shuffled = torch.randperm(len(routing), generator=torch.Generator().manual_seed(seed))
        result["random_baseline"]["expert_specialization"] = expert_specialization_top(
            chosen[shuffled], rejected[shuffled], routing).item()
    result["accuracy"] = pairwise_accuracy(mixture_reward(routing, chosen), mixture_reward(routing, rejected)).item()
    return result
