"""Personalization (§6.2): Hedge targets, Hedge router fitting, HyRe weights, router files, multi-user scoring."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_smoe import SMoERewardModel
from hf_smoe.personalization.adaptation import expert_losses, expert_rewards_of, hedge_adapt, hedge_targets, hyre_weights
from hf_smoe.personalization.routers import load_router, read_router_metadata, save_router, score_users, static_router


def numpy_hedge_targets(routing, losses, tau):
    """ω_ik ∝ π_ik exp(-L_ik / τ), normalised with the max subtracted (float64)."""
    logits = np.log(routing) - losses / tau
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 1e-3, 1e-4])
def test_hedge_targets_match_an_independent_computation(tau):
    rng = np.random.default_rng(0)
    routing = rng.dirichlet(np.ones(4), size=16)
    losses = rng.exponential(1.0, size=(16, 4))
    losses[0] = [0.1, 50.1, 50.1, 50.1]  # losses 50 nats apart: exp(-50 / 1e-4) underflows naively
    targets = hedge_targets(torch.tensor(routing), torch.tensor(losses), tau)
    assert torch.isfinite(targets).all()
    np.testing.assert_allclose(targets.numpy(), numpy_hedge_targets(routing, losses, tau), atol=1e-12)
    if tau < 1e-2:
        assert targets[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # the best expert takes everything
    torch.testing.assert_close(targets.sum(-1), torch.ones(16, dtype=torch.float64))


def test_hedge_targets_in_float32_at_tau_1e_3_do_not_overflow():
    routing = torch.tensor([[0.7, 0.3, 0.0], [1e-30, 0.5, 0.5]])
    losses = torch.tensor([[60.0, 10.0, 0.0], [0.0, 0.7, 0.69]])
    targets = hedge_targets(routing, losses, 1e-3)
    assert torch.isfinite(targets).all()
    # row 0: expert 2 has π = 0 and keeps 0; expert 1 beats 0 by 50 nats; row 1: expert 0's tiny prior cannot
    # beat 0.69 nats / τ = 690 of evidence -> expert 0 (log 1e-30 = -69 vs -690)
    assert targets[0].tolist() == [0.0, 1.0, 0.0]
    assert targets[1].argmax().item() == 0
    with pytest.raises(ValueError, match="^tau:"):
        hedge_targets(routing, losses, 0.0)


def test_hyre_weights_by_hand():
    chosen = torch.tensor([[1.0, 0.0], [2.0, 0.5]])
    rejected = torch.tensor([[0.0, 1.0], [0.0, 0.5]])
    # margins: expert 0: 1, 2; expert 1: -1, 0 -> L_k = sum softplus(-Δ)
    loss_0 = math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))
    loss_1 = math.log1p(math.exp(1)) + math.log(2)
    expected = np.exp([-loss_0, -loss_1]) / np.exp([-loss_0, -loss_1]).sum()
    np.testing.assert_allclose(hyre_weights(chosen, rejected).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(expert_losses(chosen, rejected)[:, 1].numpy(), [math.log1p(math.e), math.log(2)],
                               rtol=1e-6)


def features_of(model, num_pairs=64, seed=0):
    """Random pair features in the cache's layout, labelled by expert 2 of `model` (a 'user' who is expert 2)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    prompt, chosen, rejected = (torch.randn(num_pairs, hidden, generator=generator) for _ in range(3))
    with torch.no_grad():
        margin = model.head.experts(chosen)[:, 2] - model.head.experts(rejected)[:, 2]
    chosen, rejected = (torch.where((margin > 0).unsqueeze(1), chosen, rejected),
                        torch.where((margin > 0).unsqueeze(1), rejected, chosen))
    return Dataset.from_dict({"prompt_embedding": prompt.numpy(), "chosen_embedding": chosen.numpy(),
                              "rejected_embedding": rejected.numpy()}).with_format("torch")


@pytest.fixture
def sparse_model(backbone_dirs):
    torch.manual_seed(0)
    return SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=4, preset="sparse")


def test_hedge_moves_routing_to_the_users_expert_and_freezes_everything_else(sparse_model):
    features = features_of(sparse_model)
    before = {name: tensor.clone() for name, tensor in sparse_model.state_dict().items()}
    router = hedge_adapt(sparse_model.head, features, seed=0)
    for name, tensor in sparse_model.state_dict().items():  # backbone, experts and the model's own router
        assert torch.equal(tensor, before[name]), name
    prompts, chosen, rejected = expert_rewards_of(sparse_model.head, features)
    with torch.no_grad():
        old = sparse_model.head.router.eval()(prompts)
        new = router(prompts).mean(0)
    # the router learns Hedge's targets: here (random prompts, labels from expert 2) nearly half the pairs are best
    # explained by expert 2, which starts at 1/4 of the routing
    targets = hedge_targets(old, expert_losses(chosen, rejected), 1e-3).mean(0)
    assert targets.argmax() == 2 and targets[2] > 0.4 and old.mean(0)[2] < 0.3
    torch.testing.assert_close(new, targets, atol=0.05, rtol=0)


def test_hedge_with_huge_tau_leaves_the_router_unchanged_in_expectation(sparse_model):
    features = features_of(sparse_model)
    prompts = features[:]["prompt_embedding"]
    router = sparse_model.head.router.eval()
    with torch.no_grad():
        routing = router(prompts)
    # τ -> ∞: targets are the router's own output, so the cross-entropy gradient vanishes (no noise: eval mode)
    targets = hedge_targets(routing, expert_losses(*torch.randn(2, 64, 4)), 1e12)
    torch.testing.assert_close(targets, routing)
    loss = -(targets * torch.log(router(prompts))).sum(-1).mean()
    gradients = torch.autograd.grad(loss, list(router.parameters()))
    assert max(g.abs().max().item() for g in gradients) < 1e-6
    # with jitter and dropout on, the updates are noise around zero: mean routing stays where it was, while a
    # small τ moves it to expert 2
    with torch.no_grad():
        unchanged = hedge_adapt(sparse_model.head, features, tau=1e12)(prompts).mean(0)
        moved = hedge_adapt(sparse_model.head, features, tau=1e-3)(prompts).mean(0)
    assert (unchanged - routing.mean(0)).abs().max() < 0.1
    assert (moved - routing.mean(0)).abs().max() > 0.2


def test_router_file_round_trip_and_refusal(sparse_model, backbone_dirs, tmp_path):
    features = features_of(sparse_model)
    router = hedge_adapt(sparse_model.head, features)
    path = save_router(router, tmp_path / "alice.safetensors", sparse_model, method="hedge", n=64)
    assert path.stat().st_size < 200_000
    assert read_router_metadata(path)["info"] == {"method": "hedge", "n": 64}
    loaded = load_router(path, sparse_model)
    prompts = features[:]["prompt_embedding"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompts), router(prompts), rtol=0, atol=0)
    torch.manual_seed(5)
    other = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=4, preset="sparse")
    with pytest.raises(ValueError, match="adapted on different experts"):
        load_router(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_router(tmp_path / "junk.safetensors", sparse_model)
    with pytest.raises(ValueError, match="smoe adapt"):
        load_router(tmp_path / "missing.safetensors", sparse_model)


def test_static_router_file_and_many_users_from_shared_expert_rewards(sparse_model, tmp_path):
    features = features_of(sparse_model, num_pairs=10)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    path = save_router(static_router(sparse_model.config, weights), tmp_path / "hyre.safetensors", sparse_model)
    users = [load_router(path, sparse_model), sparse_model.head.router.eval(),
             hedge_adapt(sparse_model.head, features_of(sparse_model))]
    prompts, responses = features[:]["prompt_embedding"], features[:]["chosen_embedding"]
    rewards = score_users(sparse_model.head, users, prompts, responses)
    for user, router in enumerate(users):
        sparse_model.head.router, original = router, sparse_model.head.router
        with torch.no_grad():
            expected = sparse_model.head(prompts, responses)[0].squeeze(-1)
        sparse_model.head.router = original
        torch.testing.assert_close(rewards[user], expected)
    with torch.no_grad():
        expected_static = sparse_model.head.experts(responses) @ weights
    torch.testing.assert_close(rewards[0], expected_static)


def test_hedge_is_reproducible_from_its_seed_whatever_ran_before(sparse_model):
    features = features_of(sparse_model)
    prompts = features[:]["prompt_embedding"]
    first = hedge_adapt(sparse_model.head, features, seed=3)
    torch.rand(100)  # the caller's random state moves on
    second = hedge_adapt(sparse_model.head, features, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(first(prompts), second(prompts), rtol=0, atol=0)
        assert not torch.equal(first(prompts), hedge_adapt(sparse_model.head, features, seed=4)(prompts))
