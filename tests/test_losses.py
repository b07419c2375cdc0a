"""Every loss term against an independent numpy implementation of the paper's Eq. 3-6 and MiCRo's prior."""

import math

import numpy as np
import pytest
import torch

from hf_smoe.losses import (expert_diversity, global_balance, local_sparsity, mixture_nll, moe_preference_loss,
                            preset_lambdas, uniform_prior)


def np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_entropy(p):
    return -(p * np.log(p)).sum(axis=-1)


def np_terms(pi, chosen, rejected):
    """Eq. 3-6 and MiCRo Eq. 4 written directly from the papers, in float64."""
    k = pi.shape[1]
    sigma = 1 / (1 + np.exp(-(chosen - rejected)))
    delta = chosen - rejected
    corr = np.corrcoef(delta.T)
    iu = np.triu_indices(k, 1)
    return {
        "rm": -np.mean(np.log((pi * sigma).sum(axis=1))),
        "local_sparsity": np.mean(np_entropy(pi)) / np.log(k),
        "global_balance": -np_entropy(pi.mean(axis=0)) / np.log(k),
        "diversity": 2 / (k * (k - 1)) * np.sum(corr[iu] ** 2),
        "uniform_prior": np.mean((pi * np.log(pi)).sum(axis=1)),
    }


def random_inputs(seed, batch, k):
    rng = np.random.default_rng(seed)
    pi = np_softmax(rng.normal(size=(batch, k)) * 2)
    chosen, rejected = rng.normal(size=(batch, k)) * 3, rng.normal(size=(batch, k)) * 3
    return pi, chosen, rejected


def as_torch(*arrays):
    return [torch.tensor(a, dtype=torch.float32) for a in arrays]


LAMBDAS = {"lambda_local": 0.5, "lambda_global": 0.7, "lambda_div": 2.0, "lambda_uniform": 0.3}


@pytest.mark.parametrize("seed,batch,k", [(0, 16, 2), (1, 16, 5), (2, 7, 8), (3, 64, 20)])
def test_terms_match_numpy(seed, batch, k):
    pi, chosen, rejected = random_inputs(seed, batch, k)
    expected = np_terms(pi, chosen, rejected)
    got = moe_preference_loss(*as_torch(pi, chosen, rejected), **LAMBDAS)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
    total = (expected["rm"] + 0.5 * expected["local_sparsity"] + 0.7 * expected["global_balance"]
             + 2.0 * expected["diversity"] + 0.3 * expected["uniform_prior"])
    assert got["loss"].item() == pytest.approx(total, rel=1e-5)


def test_term_functions_are_the_ones_the_total_uses():
    pi, chosen, rejected = as_torch(*random_inputs(4, 12, 3))
    assert mixture_nll(pi, chosen, rejected) == moe_preference_loss(pi, chosen, rejected, **LAMBDAS)["rm"]
    assert local_sparsity(pi) == pytest.approx(np.mean(np_entropy(pi.numpy())) / math.log(3), rel=1e-5)
    assert global_balance(pi).item() <= 0 and uniform_prior(pi).item() <= 0
    assert 0 <= expert_diversity(chosen, rejected).item() <= 1


def test_finite_for_huge_rewards():
    pi = torch.softmax(torch.randn(8, 4), dim=-1).requires_grad_()
    chosen = torch.full((8, 4), -1e4, requires_grad=True)
    rejected = torch.full((8, 4), 1e4) + torch.randn(8, 4)
    terms = moe_preference_loss(pi, chosen, rejected, **LAMBDAS)
    # every expert is wrong by ~2e4, so -log sum_k pi_k sigma(-2e4 - eps_k) is ~2e4 (Bradley-Terry in the limit)
    expected = -torch.logsumexp(pi.log() + torch.nn.functional.logsigmoid(chosen - rejected), -1).mean()
    assert terms["rm"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["rm"].item() == pytest.approx(2e4, rel=1e-3)
    terms["loss"].backward()
    assert torch.isfinite(pi.grad).all() and torch.isfinite(chosen.grad).all()


def test_one_hot_routing_has_finite_loss_and_gradients():
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 200.0]], requires_grad=True)
    pi = logits.softmax(-1)
    assert (pi == 0).any()  # softmax underflowed to exact zeros
    chosen, rejected = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3)
    terms = moe_preference_loss(pi, chosen, rejected, **LAMBDAS)
    terms["loss"].backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(logits.grad).all() and torch.isfinite(chosen.grad).all()
    # one-hot routing: zero local entropy, and the mixture likelihood is the chosen expert's Bradley-Terry loss
    assert terms["local_sparsity"].item() == pytest.approx(0.0, abs=1e-6)
    bt = -torch.nn.functional.logsigmoid(chosen - rejected)
    assert terms["rm"].item() == pytest.approx(((bt[0, 0] + bt[1, 2]) / 2).item(), rel=1e-5)


def test_single_pair_batch_is_defined():
    pi, chosen, rejected = as_torch(*random_inputs(5, 1, 4))
    pi.requires_grad_(), chosen.requires_grad_()
    terms = moe_preference_loss(pi, chosen, rejected, **LAMBDAS)
    assert terms["diversity"].item() == 0.0  # no correlation can be measured on one pair
    # with one prompt, the batch mean routing is that prompt's routing: L_gb = -L_ls
    assert terms["global_balance"].item() == pytest.approx(-terms["local_sparsity"].item(), rel=1e-6)
    terms["loss"].backward()
    assert torch.isfinite(pi.grad).all() and torch.isfinite(chosen.grad).all()


def test_single_expert_is_bradley_terry():
    chosen, rejected = torch.randn(10, 1), torch.randn(10, 1)
    terms = moe_preference_loss(torch.ones(10, 1), chosen, rejected, **LAMBDAS)
    bt = np.mean(np.log1p(np.exp(-(chosen - rejected).numpy())))
    assert terms["rm"].item() == pytest.approx(bt, rel=1e-5)
    for name in ("local_sparsity", "global_balance", "diversity", "uniform_prior"):
        assert terms[name].item() == 0.0, name
    assert terms["loss"].item() == pytest.approx(bt, rel=1e-5)


def test_zero_variance_delta_columns_give_no_nan():
    pi, chosen, rejected = random_inputs(6, 16, 4)
    chosen[:, 1] = rejected[:, 1] + 0.5  # expert 1 prefers every chosen response by exactly 0.5: constant Delta
    chosen[:, 3] = rejected[:, 3]  # expert 3 never separates the pair: Delta = 0
    chosen_t = torch.tensor(chosen, dtype=torch.float32, requires_grad=True)
    terms = moe_preference_loss(*as_torch(pi), chosen_t, torch.tensor(rejected, dtype=torch.float32), **LAMBDAS)
    terms["loss"].backward()
    assert torch.isfinite(terms["diversity"]) and torch.isfinite(chosen_t.grad).all()
    # constant columns count as uncorrelated; only the (0, 2) pair contributes, averaged over all 6 pairs
    delta = chosen - rejected
    r02 = np.corrcoef(delta[:, 0], delta[:, 2])[0, 1]
    assert terms["diversity"].item() == pytest.approx(r02 ** 2 / 6, rel=1e-4)


def test_presets_resolve_to_the_papers_weights():
    assert preset_lambdas("sparse") == {"lambda_local": 0.5, "lambda_global": 0.5, "lambda_div": 0.5,
                                        "lambda_uniform": 0.0}
    assert preset_lambdas("micro")["lambda_uniform"] == 0.5
    for preset in ("single", "vanilla", "static"):
        assert set(preset_lambdas(preset).values()) == {0.0}
    with pytest.raises(ValueError, match="preset"):
        preset_lambdas("sparce")


def test_bad_inputs_name_the_field():
    pi, chosen, rejected = as_torch(*random_inputs(7, 4, 3))
    with pytest.raises(ValueError, match="rejected_rewards"):
        moe_preference_loss(pi, chosen, rejected[:, :2], **LAMBDAS)
    with pytest.raises(ValueError, match="lambda_div"):
        moe_preference_loss(pi, chosen, rejected, **{**LAMBDAS, "lambda_div": -1.0})
    with pytest.raises(ValueError, match="routing_weights"):
        moe_preference_loss(pi[0], chosen, rejected, **LAMBDAS)
