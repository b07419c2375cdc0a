"""Routing intervention (§5.2): the arithmetic, target selection and the flip-rate report, against hand values."""

import numpy as np
import pytest
import torch

from hf_smoe.personalization.steering import intervene, random_target_report, steered_margins, steering_report, target_experts


def test_intervention_sets_the_target_and_keeps_the_others_ratios():
    routing = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    steered = intervene(routing, 0, 0.75)
    # row 0: others 0.3 : 0.2 rescaled to sum 0.25 -> 0.15, 0.10; row 1: 0.6 : 0.3 -> 1/6, 1/12
    expected = torch.tensor([[0.75, 0.15, 0.10], [0.75, 0.25 * 2 / 3, 0.25 / 3]])
    torch.testing.assert_close(steered, expected)
    removed = torch.tensor([[0.625, 0.375, 0.0], [0.1 / 0.7, 0.6 / 0.7, 0.0]])
    torch.testing.assert_close(intervene(routing, 2, 0.0), removed)
    torch.testing.assert_close(intervene(routing, 1, 1.0), torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))


def test_intervention_per_row_targets_and_all_mass_on_the_target():
    routing = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    steered = intervene(routing, torch.tensor([0, 2]), 0.4)
    # row 0 had everything on expert 0: the others share 0.6 equally; row 1 targets expert 2
    torch.testing.assert_close(steered, torch.tensor([[0.4, 0.3, 0.3], [0.6 * 0.4, 0.6 * 0.6, 0.4]]))
    torch.testing.assert_close(steered.sum(-1), torch.ones(2))


@pytest.mark.parametrize("expert, weight, field", [(3, 0.5, "expert"), (0, 1.5, "weight"), (-1, 0.5, "expert")])
def test_intervention_rejects_bad_input_naming_the_field(expert, weight, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        intervene(torch.full((2, 3), 1 / 3), expert, weight)


def test_target_expert_is_the_one_whose_top_examples_hold_the_attribute():
    # expert 0's top-2 examples are attribute 1 twice; expert 1's are attribute 0 and 1 -> attribute 0 goes to 1
    routing = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    attributes = torch.tensor([1, 1, 0, 1])
    assert target_experts(routing, attributes, 2, top_n=2).tolist() == [1, 0]


def test_steering_report_matches_a_hand_count():
    routing = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    # expert 0 prefers chosen on every pair, expert 1 on none
    chosen = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    rejected = torch.tensor([[0.0, 2.0], [0.0, 0.5], [0.0, 0.1]])
    attributes = torch.tensor([0, 0, 0])
    targets = torch.tensor([0])
    margins = steered_margins(routing, chosen, rejected, targets[attributes], (0.0, 0.25, 0.5, 0.75, 1.0))
    # w: margin = w * 1 - (1 - w) * r1  for each pair
    r1 = np.array([2.0, 0.5, 0.1])
    expected = np.array([[w - (1 - w) * r for r in r1] for w in (0.0, 0.25, 0.5, 0.75, 1.0)])
    np.testing.assert_allclose(margins.numpy(), expected, rtol=1e-6)
    report = steering_report(routing, chosen, rejected, attributes, targets)
    # all 3 are wrong at w=0; correct at w: 0.25 -> r < 1/3: {0.1}; 0.5 -> r < 1: {0.5, 0.1}; 0.75, 1.0 -> all
    by_weight = {0.25: 1 / 3, 0.5: 2 / 3, 0.75: 1.0, 1.0: 1.0}
    assert report["flip_rate_by_weight"] == pytest.approx(by_weight)
    assert report["flip_rate"] == pytest.approx(np.mean(list(by_weight.values())))
    assert np.isnan(report["undesired_flip_rate"])  # no pair was correct at w = 0


def test_random_targets_average_their_draws():
    torch.manual_seed(0)
    routing = torch.softmax(torch.randn(40, 3), -1)
    chosen, rejected = torch.randn(40, 3), torch.randn(40, 3)
    attributes = torch.randint(2, (40,))
    report = random_target_report(routing, chosen, rejected, attributes, 3, 2, draws=5, seed=7)
    generator = torch.Generator().manual_seed(7)
    draws = [steering_report(routing, chosen, rejected, attributes, torch.randint(3, (2,), generator=generator))
             for _ in range(5)]
    assert report["flip_rate"] == pytest.approx(np.mean([d["flip_rate"] for d in draws]))
    assert report["flip_rate_by_weight"][1.0] == pytest.approx(np.mean([d["flip_rate_by_weight"][1.0] for d in draws]))
