"""Reading the experts (§6.1, App. A, Fig. 4): describe each expert in one line, then check the description.

For each expert, an LLM (the *describer*) reads the expert's 20 highest-routing-weight validation prompts and names
their common feature (Fig. 4's prompt); `fidelity` then measures how well the judge's reading of that description
follows the expert's routing weights on test prompts. The random baseline describes each expert from shuffled prompts
with the router kept fixed. Everything runs on cached features: the router needs only the prompt representations.

The unit here is a distinct prompt: routing depends only on the prompt, so a prompt shared by several pairs counts
once, both among the top examples and in the fidelity sample.
"""

import torch

from ..evaluation import head_outputs
from ..features import as_training_features
from ..metrics import expert_specialization_top, pairwise_accuracy, top_examples, top_percent_count
from ..modeling.modeling_smoe import mixture_reward
from .fidelity import SAMPLES_PER_STRATUM, TOP_FRACTION, fidelity_means, score_descriptions
from .generators import TextGenerator
from .prompts import describer_prompt, parse_description, prompt_text

TOP_EXAMPLES = 20  # validation prompts shown to the describer (§6.1)
DESCRIPTION_TOKENS = 48


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
                     top_n: int = TOP_EXAMPLES) -> list[dict]:
    """Per expert: its top-n prompts (by routing weight over distinct prompts), the describer's raw answer and the
    parsed description. routing (M, K) over the M distinct `texts`."""
    top = top_examples(routing, top_n).tolist()  # (K, n)
    raw = describer.generate([describer_prompt([texts[i] for i in rows]) for rows in top],
                             max_new_tokens=DESCRIPTION_TOKENS)
    experts = []
    for rows, answer in zip(top, raw):
        description, followed = parse_description(answer)
        experts.append({"description": description, "followed_format": followed, "raw_output": answer,
                        "top_examples": [texts[i] for i in rows]})
    return experts


def interpret_experts(describer: TextGenerator, judge: TextGenerator, describe_routing: torch.Tensor,
                      describe_texts: list, measure_routing: torch.Tensor, measure_texts: list, *, seed: int = 0,
                      random_baseline: bool = True, top_n: int = TOP_EXAMPLES,
                      per_stratum: int = SAMPLES_PER_STRATUM, judge_prompt: str = "paper",
                      calibrate_threshold: bool = False) -> dict:
    """Descriptions from the describing prompts (validation), fidelity on the measuring prompts (test), and the random
    baseline: the describer sees the describing prompts shuffled (seeded) while the router's weights stay as they
    are, so each expert is described from prompts unrelated to it. Routing (M, K) over distinct prompt texts; the
    judge reads its `judge_prompt` template (`prompts.JUDGE_PROMPTS`, Fig. 5 by default). With `calibrate_threshold`,
    each description's YES threshold is chosen on a sample of the describing prompts (`score_descriptions`).

    Returns {"experts": [...], "description_fidelity": mean over experts (Eq. 20), "fidelity_probability": the same
    on the judge's P(YES) (None when the judge gives no probabilities), "routing_share": mean routing weight of each
    expert over the measuring prompts, "random_baseline": {...} (when asked), "notes": [...] (what
    a small set could not give)}.
    """
    calibration = (describe_routing, describe_texts) if calibrate_threshold else None
    experts = describe_experts(describer, describe_routing, describe_texts, top_n)
    scores = score_descriptions(judge, [e["description"] for e in experts], measure_routing, measure_texts, seed,
                                per_stratum, judge_prompt, calibration)
    share = measure_routing.float().mean(dim=0).tolist()
    for k, (expert, score) in enumerate(zip(experts, scores)):
        expert.update(score, expert=k, routing_share=share[k])
    result = {"experts": experts, **fidelity_means(experts), "routing_share": share,
              "notes": sample_notes(len(describe_texts), len(measure_texts), top_n, per_stratum)}
    if random_baseline:
        shuffled = torch.randperm(len(describe_texts), generator=torch.Generator().manual_seed(seed)).tolist()
        baseline = describe_experts(describer, describe_routing, [describe_texts[i] for i in shuffled], top_n)
        baseline_scores = score_descriptions(judge, [e["description"] for e in baseline], measure_routing,
                                             measure_texts, seed, per_stratum, judge_prompt, calibration)
        for expert, score in zip(baseline, baseline_scores):
            expert.update(score)
        result["random_baseline"] = {"experts": baseline, **fidelity_means(baseline)}
    return result


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
                   random_baseline: bool = True, top_n: int = TOP_EXAMPLES,
                   per_stratum: int = SAMPLES_PER_STRATUM, judge_prompt: str = "paper",
                   calibrate_threshold: bool = False) -> dict:
    """`interpret_experts` for a trained head on two sets of pair features with a `prompt` column: experts are
    described from `describing` (validation) and measured on `measuring` (test), where each expert's top-10% expert
    specialization (Eq. 12, on the measuring pairs) is added beside its fidelity, and the mixture's accuracy. The
    random baseline's specialization shuffles the measuring pairs against the fixed routing weights, as its
    describer sees shuffled prompts (the paper's Table 4 reports both for its random row)."""
    result = interpret_experts(describer, judge, *routing_by_prompt(head, describing),
                               *routing_by_prompt(head, measuring), seed=seed, random_baseline=random_baseline,
                               top_n=top_n, per_stratum=per_stratum, judge_prompt=judge_prompt,
                               calibrate_threshold=calibrate_threshold)
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
