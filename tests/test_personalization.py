"""`smoe adapt`, `smoe steer` and `smoe bench users` on a saved tiny checkpoint, checked against the model's own
forward pass on tokens (an independent path from the cached features the commands use)."""

import pytest
import torch

from hf_smoe import encode_pair
from hf_smoe.bench import bench_users
from hf_smoe.cli.main import main
from hf_smoe.personalization.adaptation import adaptation_split
from hf_smoe.personalization.routers import load_router, read_router_metadata
from hf_smoe.personalization.steering import intervene
from hf_smoe.rewards import steer_responses


def forward(model, tokenizer, pairs, side):
    with torch.no_grad():
        return model(**tokenizer.pad([encode_pair(tokenizer, p, r) for p, r in zip(pairs["prompt"], pairs[side])],
                                     return_tensors="pt"))


@pytest.mark.parametrize("method", ["hedge", "hyre"])
def test_adapt_reports_what_the_model_does_with_the_new_router(checkpoint_and_data, method, capsys):
    model, tokenizer, pairs, tmp_path = checkpoint_and_data
    router_path = tmp_path / f"{method}.safetensors"
    code = main(["adapt", str(tmp_path / "checkpoint"), "--data", str(tmp_path / "pairs.jsonl"), "--n", "12",
                 "--method", method, "--output", str(router_path), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    info = read_router_metadata(router_path)["info"]
    _, held_out = adaptation_split(pairs, 12, seed=0)
    before = [forward(model, tokenizer, held_out, side) for side in ("chosen", "rejected")]
    model.head.router = load_router(router_path, model)
    after = [forward(model, tokenizer, held_out, side) for side in ("chosen", "rejected")]
    assert info["eval_pairs"] == len(held_out) == len(pairs) - 12
    assert info["accuracy_before"] == pytest.approx((before[0].logits > before[1].logits).float().mean().item())
    assert info["accuracy_after"] == pytest.approx((after[0].logits > after[1].logits).float().mean().item())
    shift = after[0].routing_weights.mean(0) - before[0].routing_weights.mean(0)
    torch.testing.assert_close(torch.tensor(info["weight_shift"]), shift, atol=1e-5, rtol=0)
    assert (tmp_path / f"{method}.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert f"{info['accuracy_before']:.4f} -> {info['accuracy_after']:.4f}" in printed


def test_adapt_needs_pairs_left_to_measure(checkpoint_and_data, capsys):
    _, _, pairs, tmp_path = checkpoint_and_data
    code = main(["adapt", str(tmp_path / "checkpoint"), "--data", str(tmp_path / "pairs.jsonl"), "--n",
                 str(len(pairs)), "--output", str(tmp_path / "r.safetensors")])
    assert code == 2 and f"n: need 0 < n < {len(pairs)}" in capsys.readouterr().err


def test_steer_rewards_are_the_intervened_mixture(checkpoint_and_data, capsys):
    model, tokenizer, _, tmp_path = checkpoint_and_data
    responses = ["good answer", "a bad rude answer", "sure here is a poem"]
    result = steer_responses(model, tokenizer, "please answer", responses, expert=1, weight=0.9)
    with torch.no_grad():
        output = model(**tokenizer.pad([encode_pair(tokenizer, "please answer", r) for r in responses],
                                       return_tensors="pt"))
    routing = output.routing_weights[0]
    torch.testing.assert_close(torch.tensor(result["rewards_before"]), output.logits.squeeze(-1))
    by_hand = torch.cat([routing[:1], torch.tensor([0.0]), routing[2:]]) * 0.1 / (1 - routing[1])
    by_hand[1] = 0.9
    torch.testing.assert_close(torch.tensor(result["routing_after"]), by_hand)
    torch.testing.assert_close(torch.tensor(result["rewards_after"]), output.expert_rewards @ by_hand)
    torch.testing.assert_close(torch.tensor(result["routing_after"]), intervene(routing[None], 1, 0.9)[0])
    assert main(["steer", str(tmp_path / "checkpoint"), "--expert", "1", "--weight", "0.9", "--prompt",
                 "please answer", "--responses", *responses]) == 0
    assert f"{result['rewards_after'][1]:.4f}" in capsys.readouterr().out
    assert main(["steer", str(tmp_path / "checkpoint"), "--expert", "7", "--weight", "0.9", "--prompt", "hi",
                 "--responses", "yes"]) == 2
    assert "expert: must be in [0, 2]" in capsys.readouterr().err


def test_bench_users_scores_many_users_from_one_pass(backbone_dirs):
    results = bench_users(backbone_dirs["llama"], num_pairs=8, num_users=10, naive_users=2)
    assert results["users"] == 10 and results["pairs"] == 8
    assert results["naive_10_users_s_linear"] == pytest.approx(10 * results["naive_per_user_s"])
    assert results["cost_ratio_10_vs_1"] == pytest.approx(results["shared_pass_10_users_s"]
                                                         / results["shared_pass_1_user_s"])
