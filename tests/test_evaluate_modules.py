"""Each `evaluate` module loads offline from its folder and returns what the torch function in hf_smoe.metrics does."""

import math

import evaluate
import pytest
import torch

from hf_smoe import metrics
from hf_smoe.evaluation.modules import MODULE_NAMES, evaluate_module_path

G = torch.Generator().manual_seed(0)
N, K, C, W = 40, 3, 3, 4
CHOSEN, REJECTED = torch.randn(N, K, generator=G), torch.randn(N, K, generator=G)
ROUTING = torch.softmax(3 * torch.randn(N, K, generator=G), dim=1)
CATEGORIES = torch.randint(0, C, (N,), generator=G)
LABELS = torch.tensor([0, 2, 2])
BASE, STEERED = torch.randn(N, generator=G), torch.randn(W, N, generator=G)
ATTRIBUTES = torch.randint(0, 2, (N,), generator=G)
JUDGMENTS = torch.randint(0, 2, (N,), generator=G)

CASES = {
    "pairwise_accuracy": (dict(chosen_rewards=CHOSEN[:, 0], rejected_rewards=REJECTED[:, 0]),
                          metrics.pairwise_accuracy(CHOSEN[:, 0], REJECTED[:, 0])),
    "routing_entropy": (dict(routing_weights=ROUTING), metrics.routing_entropy(ROUTING)),
    "global_entropy": (dict(routing_weights=ROUTING), metrics.global_entropy(ROUTING)),
    "expert_correlation": (dict(chosen_expert_rewards=CHOSEN, rejected_expert_rewards=REJECTED),
                           metrics.expert_correlation(CHOSEN, REJECTED)),
    "category_coverage": (dict(routing_weights=ROUTING, categories=CATEGORIES, num_categories=C, top_n=5),
                          metrics.category_coverage(metrics.expert_category_labels(ROUTING, CATEGORIES, C, 5), C)),
    "expert_purity": (dict(routing_weights=ROUTING, categories=CATEGORIES, expert_labels=LABELS.tolist(), top_n=5),
                      metrics.expert_purity(ROUTING, CATEGORIES, LABELS, 5)),
    "expert_specialization": (dict(chosen_expert_rewards=CHOSEN, rejected_expert_rewards=REJECTED,
                                   categories=CATEGORIES, expert_labels=LABELS.tolist(), num_categories=C),
                              metrics.expert_specialization(CHOSEN, REJECTED, CATEGORIES, LABELS, C)),
    "flip_rate": (dict(base_margins=BASE, steered_margins=STEERED.T, attributes=ATTRIBUTES),
                  metrics.flip_rate(BASE, STEERED, ATTRIBUTES)),
    "undesired_flip_rate": (dict(base_margins=BASE, steered_margins=STEERED.T, attributes=ATTRIBUTES),
                            metrics.undesired_flip_rate(BASE, STEERED, ATTRIBUTES)),
    "description_fidelity": (dict(judgments=JUDGMENTS, routing_weights=ROUTING[:, 0], experts=CATEGORIES),
                             metrics.description_fidelity(JUDGMENTS, ROUTING[:, 0], CATEGORIES)),
}


def as_lists(inputs):
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def test_cases_cover_every_module():
    assert set(CASES) == set(MODULE_NAMES)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_matches_torch_function(name):
    module = evaluate.load(evaluate_module_path(name))
    inputs, expected = CASES[name]
    assert module.inputs_description and module.features
    assert module.compute(**as_lists(inputs))[name] == pytest.approx(expected.item(), abs=1e-6)


def test_module_add_batch_matches():
    module = evaluate.load(evaluate_module_path("flip_rate"))
    inputs, expected = CASES["flip_rate"]
    lists = as_lists(inputs)
    for start in range(0, N, 16):
        module.add_batch(**{k: v[start:start + 16] for k, v in lists.items()})
    assert module.compute()["flip_rate"] == pytest.approx(expected.item(), abs=1e-6)


def test_specialization_top_percent_config():
    module = evaluate.load(evaluate_module_path("expert_specialization"), "top_percent")
    got = module.compute(chosen_expert_rewards=CHOSEN.tolist(), rejected_expert_rewards=REJECTED.tolist(),
                         routing_weights=ROUTING.tolist(), top_percent=20)
    expected = metrics.expert_specialization_top(CHOSEN, REJECTED, ROUTING, 20)
    assert got["expert_specialization"] == pytest.approx(expected.item(), abs=1e-6)


def test_coverage_returns_labels_and_nan_flip_rate():
    out = evaluate.load(evaluate_module_path("category_coverage")).compute(
        **as_lists(CASES["category_coverage"][0]))
    assert out["expert_labels"] == metrics.expert_category_labels(ROUTING, CATEGORIES, C, 5).tolist()
    out = evaluate.load(evaluate_module_path("flip_rate")).compute(
        base_margins=[1.0, 2.0], steered_margins=[[1.0], [-1.0]], attributes=[0, 0])
    assert math.isnan(out["flip_rate"])


def test_unknown_module_name():
    with pytest.raises(ValueError, match="flip_rate"):
        evaluate_module_path("nope")
