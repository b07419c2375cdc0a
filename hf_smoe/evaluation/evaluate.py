"""Evaluation, in one place: a head's outputs on cached features and the paper's metrics over a whole set.

`behaviour_metrics` (every loss term, accuracy, routing entropy, global entropy, expert correlation) is what the
Trainer's `compute_metrics` returns on the gathered evaluation set, what a finished training run reports on test,
and what `smoe eval` reports for a checkpoint; `category_metrics` adds coverage, purity and specialization (App. A)
when the data has categories.
"""

import json
import warnings
from pathlib import Path

import torch

from ..data import load_pairs, split_pairs
from ..features import FEATURE_COLUMNS, EmbeddingCache, as_training_features
from ..runtime import load_checkpoint
from ..losses import loss_weights, moe_preference_loss
from ..metrics import (category_coverage, expert_category_labels, expert_correlation, expert_purity,
                      expert_specialization, expert_specialization_top, global_entropy, pairwise_accuracy,
                      routing_entropy)
from ..errors import InputError
from ..modeling.modeling_smoe import mixture_reward
from ..runtime import save_run


@torch.no_grad()
def head_outputs(head, features, batch_size: int = 4096) -> dict:
    """Routing weights and per-expert rewards of every pair in `features`, in eval mode, read `batch_size` pairs at
    a time (only the K-wide outputs of the whole set are held)."""
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    parts = {"routing_weights": [], "chosen_expert_rewards": [], "rejected_expert_rewards": []}
    for start in range(0, len(features), batch_size):
        batch = features[start:start + batch_size]
        columns = {name: batch[name].to(device) for name in FEATURE_COLUMNS}
        parts["routing_weights"].append(head.router(columns["prompt_embedding"]))
        parts["chosen_expert_rewards"].append(head.experts(columns["chosen_embedding"]))
        parts["rejected_expert_rewards"].append(head.experts(columns["rejected_embedding"]))
    head.train(was_training)
    num_experts = head.experts.out_features
    return {name: torch.cat(values) if values else torch.empty(0, num_experts, device=device)
            for name, values in parts.items()}


def behaviour_metrics(outputs: dict, lambdas: dict) -> dict:
    """Every loss term plus accuracy, routing entropy, global entropy and expert correlation, as floats."""
    routing, chosen, rejected = (outputs["routing_weights"], outputs["chosen_expert_rewards"],
                                 outputs["rejected_expert_rewards"])
    terms = moe_preference_loss(routing, chosen, rejected, **lambdas)
    metrics = {name: value.item() for name, value in terms.items()}
    metrics.update(
        accuracy=pairwise_accuracy(mixture_reward(routing, chosen), mixture_reward(routing, rejected)).item(),
        routing_entropy=routing_entropy(routing).item(),
        global_entropy=global_entropy(routing).item(),
        expert_correlation=expert_correlation(chosen, rejected).item(),
    )
    return metrics


def has_categories(pairs) -> bool:
    """Whether category recovery can be measured: every pair has a category and there are at least two (with one,
    coverage and purity would be 1.0 whatever the router does)."""
    return "category" in pairs.column_names and None not in pairs["category"] and len(set(pairs["category"])) > 1


def category_metrics(model_head, validation, test) -> dict:
    """Category coverage, expert purity and expert specialization (App. A, Eq. 11-12): experts are labelled on
    validation, measured on test. Also the test accuracy within each category (the paper's Table 9)."""
    names = sorted(set(validation["category"]) | set(test["category"]))
    if len(names) < 2:
        raise InputError(f"category: coverage and purity need at least two categories, the data has {names}.")
    if len(validation) == 0 or len(test) == 0:
        raise InputError("category: experts are labelled on one split and measured on another; both need pairs.")
    codes = {name: i for i, name in enumerate(names)}
    val_categories = torch.tensor([codes[c] for c in validation["category"]])
    test_categories = torch.tensor([codes[c] for c in test["category"]])
    val_routing = head_outputs(model_head, as_training_features(validation))["routing_weights"].cpu()
    test_outputs = {k: v.cpu() for k, v in head_outputs(model_head, as_training_features(test)).items()}
    labels = expert_category_labels(val_routing, val_categories, len(names))
    chosen, rejected = test_outputs["chosen_expert_rewards"], test_outputs["rejected_expert_rewards"]
    return {"category_coverage": category_coverage(labels, len(names)).item(),
            "expert_purity": expert_purity(test_outputs["routing_weights"], test_categories, labels).item(),
            "expert_specialization": expert_specialization(chosen, rejected, test_categories, labels,
                                                           len(names)).item(),
            "expert_specialization_top10": expert_specialization_top(chosen, rejected,
                                                                     test_outputs["routing_weights"]).item(),
            "expert_categories": [names[i] for i in labels.tolist()],
            "accuracy_by_category": accuracy_by_category(test_outputs, test_categories, names)}


def mixture_rewards(outputs: dict) -> tuple:
    """(chosen, rejected) mixture rewards (Eq. 2), each (N,), of `head_outputs`."""
    return tuple(mixture_reward(outputs["routing_weights"], outputs[f"{side}_expert_rewards"]).squeeze(-1)
                 for side in ("chosen", "rejected"))


def accuracy_by_category(outputs: dict, categories: torch.Tensor, names: list) -> dict:
    """Pairwise accuracy of the mixture reward within each category present."""
    chosen, rejected = mixture_rewards(outputs)
    return {name: pairwise_accuracy(chosen[categories == code], rejected[categories == code]).item()
            for code, name in enumerate(names) if (categories == code).any()}


def evaluate_head(model, features) -> dict:
    """Test metrics of a trained head, with category recovery when the data has categories."""
    test = as_training_features(features["test"])
    metrics = behaviour_metrics(head_outputs(model.head, test), loss_weights(model.config))
    if has_categories(features["test"]):
        metrics.update(category_metrics(model.head, features["validation"], features["test"]))
    return metrics


def evaluate_checkpoint(checkpoint, dataset, *, format=None, split="test", max_pairs=None, seed=0, cache_dir=None,
                        max_length=None) -> dict:
    """Accuracy, loss terms, routing entropy, global entropy and expert correlation on all pairs; with categories,
    also coverage, purity and specialization, labelling experts on half of the prompts and measuring on the other
    half (the paper labels on validation and measures on test; one dataset is split by prompt, seeded)."""
    model, tokenizer = load_checkpoint(checkpoint)
    pairs = load_pairs(dataset, format, split=split, max_pairs=max_pairs, seed=seed)
    cache = EmbeddingCache.of_checkpoint(model, tokenizer, max_length, cache_dir=cache_dir)
    features = cache.pair_features(pairs)
    results = behaviour_metrics(head_outputs(model.head, as_training_features(features)), loss_weights(model.config))
    results["pairs"] = len(pairs)
    if has_categories(pairs):
        labelling, measuring = prompt_halves(features, pairs, seed)
        if len(labelling) and len(measuring):
            results.update(category_metrics(model.head, labelling, measuring))
        else:
            warnings.warn(f"category metrics left out: the {len(pairs)} pairs do not split by prompt into a half "
                          "that labels the experts and a half that measures them; give more prompts.", stacklevel=2)
    return results


def prompt_halves(features, pairs, seed: int = 0) -> tuple:
    """(labelling, measuring): `features` with the pairs' `prompt` column, split by prompt into two seeded halves.
    One dataset stands in for the paper's validation split (experts are labelled or described on it) and test split
    (they are measured on it); no prompt is in both."""
    halves = split_pairs(features.add_column("prompt", list(pairs["prompt"])), seed=seed, validation=0.0, test=0.5,
                         group_by="prompt")
    return halves["train"], halves["test"]


def write_evaluation(results: dict, output, job: dict) -> Path:
    """The results with the exact command, the job (checkpoint, data, seed, ...) and the versions (`save_run`)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_run(output.parent, job, results, output.name)
    return output


def is_evaluation_file(path: Path) -> bool:
    """A JSON file `write_evaluation` wrote (so `smoe eval --overwrite` may replace it)."""
    try:
        return "accuracy" in json.loads(path.read_text())["results"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
