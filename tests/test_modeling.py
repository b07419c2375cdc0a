"""SMoERewardModel: prompt and response representations, padding invariance, routing override, frozen backbone,
presets."""

import pytest
import torch
from conftest import PAIRS, encode_batch

from hf_smoe import SMoERewardModel, encode_pair, moe_preference_loss

ATOL = 1e-5


def own_forward(backbone, ids):
    """The backbone's last hidden states for one unpadded sequence."""
    with torch.no_grad():
        return backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]


def test_representations_are_where_spec_says(model, kind, tokenizers):
    tokenizer = tokenizers[kind]
    out = model(**encode_batch(tokenizer))
    for row, (prompt, response) in enumerate(PAIRS):
        encoded = encode_pair(tokenizer, prompt, response)
        ids, prompt_length = encoded["input_ids"], encoded["prompt_lengths"]
        full = own_forward(model.backbone, ids)
        # response: last token of chat-template(x) + y
        torch.testing.assert_close(out.response_embeddings[row], full[-1], atol=ATOL, rtol=0)
        # prompt: last token of a prompt-only pass (for a causal backbone this is also the same pass's state)
        prompt_only = own_forward(model.backbone, ids[:prompt_length])
        torch.testing.assert_close(out.prompt_embeddings[row], prompt_only[-1], atol=ATOL, rtol=0)
        if kind == "llama":
            torch.testing.assert_close(out.prompt_embeddings[row], full[prompt_length - 1], atol=ATOL, rtol=0)
        else:  # a bidirectional encoder's state at that position has seen the response: a second pass is needed
            assert not torch.allclose(full[prompt_length - 1], prompt_only[-1], atol=1e-3)


def test_left_and_right_padding_agree(model, kind, tokenizers):
    right = model(**encode_batch(tokenizers[kind], padding_side="right"))
    left_batch = encode_batch(tokenizers[kind], padding_side="left")
    assert left_batch["attention_mask"][:, 0].eq(0).any()  # the batch really is left-padded
    left = model(**left_batch)
    for name in ("logits", "expert_rewards", "routing_weights", "prompt_embeddings", "response_embeddings"):
        torch.testing.assert_close(left[name], right[name], atol=ATOL, rtol=0)


def test_prompt_boundary_found_without_prompt_lengths(model, kind, tokenizers):
    batch = encode_batch(tokenizers[kind], padding_side="left")
    given = model(**batch)
    found = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(found.prompt_embeddings, given.prompt_embeddings, atol=0, rtol=0)
    torch.testing.assert_close(found.logits, given.logits, atol=0, rtol=0)


def test_outputs_are_the_mixture_of_linear_experts(model, kind, tokenizers):
    out = model(**encode_batch(tokenizers[kind]))
    weight, bias = model.head.experts.weight, model.head.experts.bias
    expected_experts = out.response_embeddings @ weight.T + bias  # r_k = w_k . h + b_k
    torch.testing.assert_close(out.expert_rewards, expected_experts, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.routing_weights.sum(-1), torch.ones(len(PAIRS)), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[:, 0], (out.routing_weights * out.expert_rewards).sum(-1), atol=ATOL,
                               rtol=0)
    assert out.logits.shape == (len(PAIRS), 1)


def test_routing_override(model, kind, tokenizers):
    batch = encode_batch(tokenizers[kind])
    base = model(**batch)
    weights = torch.tensor([0.7, 0.0, 0.3, 0.0])
    steered = model(**batch, routing_weights=weights)
    torch.testing.assert_close(steered.expert_rewards, base.expert_rewards, atol=0, rtol=0)
    expected = 0.7 * base.expert_rewards[:, 0] + 0.3 * base.expert_rewards[:, 2]
    torch.testing.assert_close(steered.logits[:, 0], expected, atol=ATOL, rtol=0)
    per_row = torch.eye(4)[[3, 1, 0]]  # a different one-hot expert per pair
    picked = model(**batch, routing_weights=per_row)
    torch.testing.assert_close(picked.logits[:, 0], base.expert_rewards[[0, 1, 2], [3, 1, 0]], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="routing_weights"):
        model(**batch, routing_weights=torch.ones(3))
    with pytest.raises(ValueError, match="routing_weights"):
        model(**batch, routing_weights=torch.tensor([float("nan"), 0, 0, 1.0]))


def test_frozen_backbone_gradients_reach_only_the_head(model, kind, tokenizers):
    tokenizer = tokenizers[kind]
    model.train()
    assert not model.backbone.training and model.head.training  # frozen backbone: no dropout in its features
    chosen = model(**tokenizer.pad([encode_pair(tokenizer, p, r) for p, r in PAIRS], return_tensors="pt"))
    rejected = model(**tokenizer.pad([encode_pair(tokenizer, p, "no") for p, _ in PAIRS], return_tensors="pt"))
    terms = moe_preference_loss(chosen.routing_weights, chosen.expert_rewards, rejected.expert_rewards,
                                lambda_local=0.5, lambda_global=0.5, lambda_div=2.0)
    terms["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    head_grads = {name: p.grad for name, p in model.head.named_parameters()}
    # a pairwise loss sees only r_w - r_l, where the experts' biases cancel: their gradient is exactly zero
    assert torch.equal(head_grads.pop("experts.bias"), torch.zeros(4))
    assert head_grads and all(g is not None and g.abs().sum() > 0 for g in head_grads.values())


def test_unfrozen_backbone_trains_end_to_end(backbone_dirs, tokenizers):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2, freeze_backbone=False)
    model(**encode_batch(tokenizers["llama"])).logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_jitter_and_dropout_only_in_training(model, kind, tokenizers):
    batch = encode_batch(tokenizers[kind])
    model.eval()
    first, second = model(**batch), model(**batch)
    torch.testing.assert_close(first.routing_weights, second.routing_weights, atol=0, rtol=0)
    model.train()
    noisy = model(**batch).routing_weights
    assert not torch.allclose(noisy, first.routing_weights)
    torch.testing.assert_close(noisy.sum(-1), torch.ones(len(PAIRS)), atol=ATOL, rtol=0)


def test_jitter_multiplies_router_input_by_uniform_noise(model):
    """Mixtral's convention: g(x) * U(1 - j, 1 + j), drawn elementwise, before the router MLP."""
    router = model.head.router
    router.dropout.p = 0.0
    g = torch.randn(5, model.config.hidden_size)
    router.train()
    torch.manual_seed(123)
    noisy = router(g)
    torch.manual_seed(123)
    noise = torch.empty_like(g).uniform_(0.75, 1.25)
    router.eval()
    torch.testing.assert_close(noisy, router(g * noise), atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset,num_experts", [("single", None), ("static", 3)])
def test_input_independent_presets(preset, num_experts, backbone_dirs, tokenizers):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], preset=preset, num_experts=num_experts)
    out = model(**encode_batch(tokenizers["llama"]))
    expected_k = 1 if preset == "single" else 3
    assert out.routing_weights.shape == (len(PAIRS), expected_k)
    torch.testing.assert_close(out.routing_weights, torch.full_like(out.routing_weights, 1 / expected_k))
    if preset == "single":
        torch.testing.assert_close(out.logits, out.expert_rewards)


def test_mean_pooling(backbone_dirs, tokenizers):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2, pooling="mean")
    tokenizer = tokenizers["llama"]
    out = model(**encode_batch(tokenizer, padding_side="left"))
    encoded = encode_pair(tokenizer, *PAIRS[1])
    full = own_forward(model.backbone, encoded["input_ids"])
    torch.testing.assert_close(out.response_embeddings[1], full.mean(0), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.prompt_embeddings[1], full[:encoded["prompt_lengths"]].mean(0), atol=ATOL, rtol=0)


def test_from_backbone_keeps_pretrained_weights(backbone_dirs):
    from transformers import AutoModel

    pretrained = AutoModel.from_pretrained(backbone_dirs["llama"])
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"])
    for name, tensor in pretrained.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], tensor, atol=0, rtol=0)
    assert not model.training


def test_bad_inputs_raise_clear_errors(model, kind, tokenizers):
    batch = encode_batch(tokenizers[kind])
    with pytest.raises(ValueError, match="prompt_lengths"):
        model(**{**batch, "prompt_lengths": torch.tensor([0, 3, 3])})
    lengths = batch["attention_mask"].sum(1)
    with pytest.raises(ValueError, match="prompt_lengths"):
        model(**{**batch, "prompt_lengths": lengths})  # no response token left
    with pytest.raises(ValueError, match="input_ids"):  # no assistant turn in the text
        model(input_ids=batch["input_ids"][:, :3], attention_mask=batch["attention_mask"][:, :3])
    model.config.assistant_turn_pattern = None
    with pytest.raises(ValueError, match="prompt_lengths"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_a_frozen_backbone_stays_frozen_on_every_load_path(backbone_dirs, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    for freeze in (True, False):
        SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3,
                                      freeze_backbone=freeze).save_pretrained(tmp_path / str(freeze))
        for load in (SMoERewardModel.from_pretrained, AutoModel.from_pretrained,
                     AutoModelForSequenceClassification.from_pretrained):
            model = load(tmp_path / str(freeze))
            for mode in (False, True):  # as loaded (eval), then as a Trainer puts it
                model.train(mode)
                assert all(p.requires_grad != freeze for p in model.backbone.parameters()), (load, mode)
                assert all(p.requires_grad for p in model.head.parameters())
