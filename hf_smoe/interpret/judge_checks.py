"""Checks of the judge itself: how much of the description fidelity it lets any model reach, measured on prompts
whose feature is known. A judge that misreads plain, hand-written descriptions caps every model's fidelity.

Each check is reported on the binary answer (the paper's fidelity) and on P(YES): a small judge that answers NO to
everything scores 0 on the first while its P(YES) may still rank the matching prompts first, which the AUC shows
whatever the YES threshold. With calibration, each description's YES threshold is also chosen on prompts of the
describing half (`fidelity.calibrated_threshold`) and the binary figures are reported again at those thresholds.
"""

import json
import math
from pathlib import Path

import torch

from ..errors import InputError
from ..metrics import judgment_auc
from ..runtime import first_line
from . import prompts
from .fidelity import binary_answers, fidelities, group_thresholds, mean_or_none, yes_probabilities
from .generators import TextGenerator

CHECK_PROMPTS_PER_CATEGORY = 40  # distinct prompts judged per category by `smoe interpret --check-judge`


def judge_agreement(judge: TextGenerator, texts: list, categories: list, descriptions: dict,
                    judge_prompt: str = "paper", calibration: tuple[list, list] | None = None) -> dict:
    """How well the judge itself reads a known feature, through its `judge_prompt` template: each category's
    hand-written `descriptions[category]` against every prompt of `texts` (categories known).

    Returns the YES rate of each description on each category; `ideal_fidelity`: the description fidelity
    (Eq. 19-20) an ideal router would get with this judge, one expert per described category routing exactly its
    category's prompts (weight 1, else 0), where 1.0 means the judge says YES to exactly the right prompts and the gap
    below 1 is what the judge alone costs every model's fidelity; `ideal_fidelity_probability`: the same on P(YES);
    and `auc`: the mean over descriptions of the AUC of P(YES) for the matching prompts against the others
    (`judgment_auc`). The P(YES) figures are None when the judge gives no probabilities. With `calibration` (the
    describing half's texts and categories), each description's threshold is chosen there (`thresholds`) and
    `ideal_fidelity_calibrated` and `yes_rates_calibrated` are the binary figures at it (left out, with a warning,
    when the judge gives no probabilities)."""
    names = sorted(descriptions)
    judgments, membership, experts = judged_descriptions(judge, texts, categories, descriptions, judge_prompt)
    fidelity, on_probability = fidelities(judgments, membership.flatten().double(), experts, len(names))
    aucs = dict(zip(names, description_aucs(judgments, membership)))
    known = [value for value in on_probability if value is not None]
    check = {"descriptions": descriptions, "yes_rates": category_yes_rates(binary_answers(judgments), names,
                                                                           categories),
             "ideal_fidelity": mean_or_none(fidelity),
             "ideal_fidelity_probability": mean_or_none(known) if len(known) == len(names) else None,
             "auc": mean_or_none([value for value in aucs.values() if value is not None]),
             "ideal_fidelity_per_category": dict(zip(names, fidelity)),
             "ideal_fidelity_probability_per_category": dict(zip(names, on_probability)),
             "auc_per_category": aucs, "prompts": len(texts), "judge_prompt": judge_prompt}
    if calibration is not None:
        calibrating, targets, groups = judged_descriptions(judge, *calibration, descriptions, judge_prompt)
        thresholds = group_thresholds(calibrating, targets.flatten().double(), groups, len(names))
        if thresholds is not None:
            answers = binary_answers(judgments, torch.tensor(thresholds)[experts])
            calibrated, _ = fidelities(judgments, membership.flatten().double(), experts, len(names), answers)
            check |= {"thresholds": dict(zip(names, thresholds)), "calibration_prompts": len(calibration[0]),
                      "ideal_fidelity_calibrated": mean_or_none(calibrated),
                      "ideal_fidelity_calibrated_per_category": dict(zip(names, calibrated)),
                      "yes_rates_calibrated": category_yes_rates(answers, names, categories)}
    return check


def judged_descriptions(judge: TextGenerator, texts: list, categories: list, descriptions: dict,
                        judge_prompt: str) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(judgments, membership (D, N), description index of each judgment): every description (sorted by category)
    judged against every prompt of `texts`, in description-major order."""
    names = sorted(descriptions)
    judgments = judge.judge([prompts.judge_prompt(descriptions[name], text, judge_prompt) for name in names
                             for text in texts])
    membership = torch.tensor([[category == name for category in categories] for name in names], dtype=torch.bool)
    return judgments, membership, torch.arange(len(names)).repeat_interleave(len(texts))


def category_yes_rates(answers: torch.Tensor, names: list, categories: list) -> dict:
    """The YES rate of each description (rows of `answers` (D * N,) 0/1, description-major) on each category."""
    answers = answers.view(len(names), len(categories))
    return {name: {category: mean_or_none(answers[i, [c == category for c in categories]].tolist())
                   for category in sorted(set(categories))} for i, name in enumerate(names)}


def description_aucs(judgments: list, membership: torch.Tensor) -> list:
    """Per description (a row of `membership` (D, N) over the judgments in row order): the AUC of P(YES) for its
    matching prompts against the others; None without probabilities or without prompts on either side."""
    scores = yes_probabilities(judgments)
    if scores is None:
        return [None] * len(membership)
    values = [judgment_auc(row_scores, row).item() for row_scores, row in zip(scores.view(membership.shape),
                                                                                membership)]
    return [None if math.isnan(value) else value for value in values]


def judge_check_prompts(texts: list, categories: list, per_category: int, seed: int = 0) -> tuple[list, list]:
    """(texts, categories) of at most `per_category` prompts of each category, drawn seeded without replacement and
    kept in their original order; prompts without a category are left out (they match no description)."""
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for category in sorted({c for c in categories if c is not None}):
        rows = [row for row, c in enumerate(categories) if c == category]
        keep += [rows[i] for i in torch.randperm(len(rows), generator=generator)[:per_category].tolist()]
    keep.sort()
    return [texts[row] for row in keep], [categories[row] for row in keep]


def read_descriptions(path, categories) -> dict:
    """The hand-written descriptions of a `--check-judge` file (JSON, or YAML for any other suffix): a mapping of
    category -> one-line description, every category one of `categories` (those of the data)."""
    import yaml

    path = Path(path).expanduser()
    flag = f"--check-judge {path}"
    try:
        text = path.read_text(encoding="utf-8")
        descriptions = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as error:
        raise InputError(f"{flag}: cannot read it ({error.strerror or error}).") from None
    except (ValueError, yaml.YAMLError) as error:
        raise InputError(f"{flag}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                         f"({first_line(error)}).") from None
    if not isinstance(descriptions, dict) or not descriptions:
        raise InputError(f"{flag}: expected a mapping of each category to a one-line description, e.g. "
                         "{\"business\": \"asks for a professional business style\"}.")
    bad = [repr(key) for key, value in descriptions.items() if not isinstance(key, str) or not isinstance(value, str)
           or not value.strip() or "\n" in value.strip()]
    if bad:
        raise InputError(f"{flag}: the description of {', '.join(bad)} is not a non-empty one-line text.")
    unknown = sorted(set(descriptions) - set(categories))
    if unknown:
        raise InputError(f"{flag}: {', '.join(map(repr, unknown))} not among the data's categories "
                         f"({', '.join(sorted(set(categories)))}).")
    return {category: description.strip() for category, description in descriptions.items()}


def judge_check_markdown(check: dict, prompts: str = "distinct test prompts") -> list:
    """The check as markdown lines: the YES-rate table with each description's AUC, then the ideal fidelities; with
    calibrated thresholds, their YES-rate table and ideal fidelity after."""
    lines = [f"The judge itself, on {check['prompts']} {prompts}: YES rate (%) of each category's hand-written "
             "description on each category's prompts (an ideal judge: 100 on the diagonal, 0 elsewhere), and the AUC "
             "of P(YES) for its own category's prompts against the others (1.0 separates them, 0.5 is chance)",
             "", *yes_rate_table(check, check["yes_rates"], "AUC of P(YES)",
                                 lambda name: number(check["auc_per_category"][name]))]
    lines += ["", f"Fidelity of an ideal router (one expert per category, weight 1 on its prompts) with this judge: "
                  f"{number(check['ideal_fidelity'])} on the YES/NO answers, "
                  f"{number(check['ideal_fidelity_probability'])} on P(YES) (1.0 for a perfect judge): what routing "
                  f"by the true category, described exactly, scores through this judge. Mean AUC of P(YES): "
                  f"{number(check['auc'])}.", ""]
    if "thresholds" in check:
        lines += [f"With each description's YES threshold on P(YES) calibrated on {check['calibration_prompts']} "
                  "prompts of the describing half: YES rate (%) at that threshold", "",
                  *yes_rate_table(check, check["yes_rates_calibrated"], "threshold",
                                  lambda name: number(check["thresholds"][name])),
                  "", f"Fidelity of an ideal router at the calibrated thresholds: "
                      f"{number(check['ideal_fidelity_calibrated'])} on the YES/NO answers.", ""]
    return lines


def yes_rate_table(check: dict, yes_rates: dict, last_column: str, last_cell) -> list:
    """A markdown table of each description's YES rate (%) on each category, and `last_cell(name)` after."""
    categories = sorted(next(iter(yes_rates.values())))
    lines = ["| description | " + " | ".join(categories) + f" | {last_column} |", "|---" * (len(categories) + 2) + "|"]
    for name, rates in yes_rates.items():
        cells = ["-" if rates[c] is None else f"{100 * rates[c]:.0f}" for c in categories]
        lines.append(f"| {name}: {check['descriptions'][name]} | {' | '.join(cells)} | {last_cell(name)} |")
    return lines


def number(value: float | None) -> str:
    """A figure to three decimals, '-' when it is unknown."""
    return "-" if value is None else f"{value:.3f}"
