"""TRL integration: SMoERewardTrainer (the paper's objective end to end, TRL's formats and defaults) and smoe_reward
(GRPO reward functions with per-user routers), run against the real TRL and peft."""

import copy
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.losses import loss_weights, moe_preference_loss
from hf_smoe.errors import InputError
from hf_smoe.modeling.modeling_smoe import SMoERouter
from hf_smoe.rewards import smoe_reward
from hf_smoe.personalization.routers import save_router, set_router
from hf_smoe.testing import save_tiny_causal_lm
from hf_smoe.trl import SMoERewardTrainer, SMoERewardTrainerConfig

TOPICS = ["cat", "dog", "sun", "rain", "code", "math", "poem", "story"]


def pairs(n=16):
    """(prompt, chosen, rejected) texts over the tiny tokenizer's words."""
    return [(f"what is the {TOPICS[i % 8]} ?", "a kind and helpful answer", "no , a rude answer") if i % 2 else
            (f"please code a {TOPICS[i % 8]}", "sure here is a short poem", "no") for i in range(n)]


def trl_dataset(kind: str, n=16) -> Dataset:
    """The same pairs in one of TRL's preference formats."""
    rows = []
    for prompt, chosen, rejected in pairs(n):
        if kind == "conversational explicit":
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        elif kind == "conversational implicit":
            turn = [{"role": "user", "content": prompt}]
            rows.append({"chosen": turn + [{"role": "assistant", "content": chosen}],
                         "rejected": turn + [{"role": "assistant", "content": rejected}]})
        elif kind == "standard explicit":
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:  # standard implicit: the shared text is the prompt
            rows.append({"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"})
    return Dataset.from_list(rows)


@pytest.fixture
def build(backbone_dirs, tokenizers):
    def build_model(**overrides):
        torch.manual_seed(0)
        return SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3, tokenizer=tokenizers["llama"],
                                             **overrides)
    return build_model


def config(tmp_path, **overrides):
    settings = {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "report_to": "none",
                "bf16": False, "gradient_checkpointing": False, "seed": 0, **overrides}
    return SMoERewardTrainerConfig(output_dir=str(tmp_path / "trl"), **settings)


def state(module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def changed(before: dict, after: dict) -> set:
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("kind", ["conversational explicit", "conversational implicit", "standard explicit",
                                  "standard implicit"])
def test_trl_formats_are_encoded_with_the_prompt_boundary(kind, build, tokenizers, tmp_path):
    tokenizer = tokenizers["llama"]
    trainer = SMoERewardTrainer(build(), config(tmp_path), train_dataset=trl_dataset(kind),
                                processing_class=tokenizer)
    for row, (prompt, chosen, rejected) in zip(trainer.train_dataset, pairs()):
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            expected = encode_pair(tokenizer, prompt, response, max_length=1024)
            assert row[f"{side}_input_ids"] == expected["input_ids"]
            assert row[f"{side}_prompt_lengths"] == expected["prompt_lengths"]


def test_the_loss_on_a_batch_is_moe_preference_loss(build, tokenizers, tmp_path):
    tokenizer, model = tokenizers["llama"], build(lambda_div=0.5)
    trainer = SMoERewardTrainer(model, config(tmp_path), train_dataset=trl_dataset("conversational explicit"),
                                processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()  # router jitter and dropout off, so the two computations see the same routing
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        sides = {}
        for side in ("chosen", "rejected"):
            outputs = [model(**{k: torch.tensor([v]) for k, v in encode_pair(tokenizer, p, r).items()})
                       for p, r in ((prompt, {"chosen": c, "rejected": j}[side]) for prompt, c, j in pairs()[:4])]
            sides[side] = (torch.cat([o.routing_weights for o in outputs]),
                           torch.cat([o.expert_rewards for o in outputs]))
        expected = moe_preference_loss(sides["chosen"][0], sides["chosen"][1], sides["rejected"][1],
                                       **loss_weights(model.config))["loss"]
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def test_a_frozen_backbone_stays_bit_identical_and_the_head_trains(build, tokenizers, tmp_path):
    model = build()
    backbone, head = state(model.backbone), state(model.head)
    trainer = SMoERewardTrainer(model, config(tmp_path), train_dataset=trl_dataset("standard explicit"),
                                processing_class=tokenizers["llama"])
    trainer.train()
    assert not changed(backbone, state(model.backbone))
    assert changed(head, state(model.head)) == set(head) - {"experts.bias"}  # r_k(y_w) - r_k(y_l) cancels it
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss", "rm", "local_sparsity", "global_balance", "diversity", "accuracy"} <= logged
    assert sorted({group["initial_lr"] for group in trainer.optimizer.param_groups}) == [5e-4, 2e-3]


def test_an_unfrozen_backbone_trains_at_learning_rate(build, tokenizers, tmp_path):
    model = build(freeze_backbone=False)
    backbone = state(model.backbone)
    trainer = SMoERewardTrainer(model, config(tmp_path, learning_rate=1e-3),
                                train_dataset=trl_dataset("conversational implicit"),
                                processing_class=tokenizers["llama"])
    trainer.train()
    assert changed(backbone, state(model.backbone))
    assert sorted({group["initial_lr"] for group in trainer.optimizer.param_groups}) == [5e-4, 1e-3, 2e-3]


def test_a_lora_backbone_trains_its_adapters_and_the_whole_head(build, tokenizers, tmp_path):
    model = build()
    base = state(model.backbone)
    trainer = SMoERewardTrainer(model, config(tmp_path), train_dataset=trl_dataset("conversational explicit"),
                                processing_class=tokenizers["llama"],
                                peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    head = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if ".head." in name
            and p.requires_grad}
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_B" in name}
    assert head and lora
    trainer.train()
    now = dict(trainer.model.named_parameters())
    assert all(not torch.equal(lora[name], now[name]) for name in lora)  # B starts at 0: any change is training
    assert all(not torch.equal(head[name], now[name]) for name in head if not name.endswith("experts.bias"))
    merged = trainer.model.merge_and_unload()
    assert changed(base, state(merged.backbone))  # the adapters moved the backbone


def test_trls_default_reward_config_trains_without_overrides(build, tokenizers, tmp_path):
    """TRL's defaults (gradient checkpointing and bf16 on) with an unfrozen backbone, where checkpointing runs: both
    our trainer and TRL's own RewardTrainer (plain Bradley-Terry on the mixture reward; the model finds the prompt
    boundary from the assistant-turn pattern)."""
    dataset = trl_dataset("conversational explicit")
    for trainer_class in (SMoERewardTrainer, RewardTrainer):
        model = build(freeze_backbone=False)
        args = RewardConfig(output_dir=str(tmp_path / trainer_class.__name__), max_steps=2, report_to="none",
                            use_cpu=not torch.cuda.is_available())  # transformers asks for it with bf16 on a CPU
        assert args.gradient_checkpointing and args.bf16
        backbone = state(model.backbone)
        trainer_class(model, args, train_dataset=dataset, processing_class=tokenizers["llama"]).train()
        assert model.backbone.layers[0].gradient_checkpointing
        assert changed(backbone, state(model.backbone)), trainer_class.__name__


# --- GRPO reward functions ---------------------------------------------------------------------------------------


def routers_for(model, tmp_path) -> dict:
    """Two users' router files, each a differently seeded router for `model`'s experts."""
    files = {}
    for seed, user in enumerate(("alice", "bob"), start=1):
        torch.manual_seed(seed)
        files[user] = save_router(SMoERouter(model.config), tmp_path / f"{user}.safetensors", model)
    return files


def grpo_prompts(kind: str) -> Dataset:
    users = ["alice", "bob", None, "alice", None, "bob", "bob", None]
    texts = [f"what is the {topic} ?" for topic in TOPICS]
    prompts = texts if kind == "standard" else [[{"role": "user", "content": text}] for text in texts]
    return Dataset.from_dict({"prompt": prompts, "user": users})


@pytest.mark.parametrize("kind", ["standard", "conversational"])
def test_grpo_with_per_user_routers_scores_each_sample_as_alone_with_its_router(kind, build, tokenizers, tmp_path):
    reward_model = build()
    routers = routers_for(reward_model, tmp_path)
    reward = smoe_reward(reward_model, routers=routers, tokenizer=tokenizers["llama"])
    calls = []

    def recorded(prompts, completions, **columns):
        rewards = reward(prompts, completions, **columns)
        calls.append((prompts, completions, columns["user"], rewards))
        return rewards

    recorded.__name__ = "smoe_reward"
    policy = save_tiny_causal_lm(tmp_path / "policy")
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=8, num_generations=2,
                      max_completion_length=6, max_steps=2, report_to="none", logging_steps=1, bf16=False,
                      seed=0)
    GRPOTrainer(model=policy, reward_funcs=recorded, args=args, train_dataset=grpo_prompts(kind)).train()
    assert len(calls) == 2 and all(len(prompts) == 8 for prompts, *_ in calls)  # 4 prompts x 2 completions a step
    assert {user for _, _, users, _ in calls for user in users} == {"alice", "bob", None}  # every row, two steps

    alone = {user: copy.deepcopy(reward_model) for user in ("alice", "bob", None)}
    for user in ("alice", "bob"):
        set_router(alone[user], routers[user])
    tokenizer = tokenizers["llama"]
    for prompts, completions, users, rewards in calls:
        for prompt, completion, user, got in zip(prompts, completions, users, rewards):
            text = completion if isinstance(completion, str) else completion[0]["content"]
            inputs = {k: torch.tensor([v]) for k, v in encode_pair(tokenizer, prompt, text, 1024, True).items()}
            with torch.no_grad():
                expected = alone[user].eval()(**inputs).logits.item()
            assert got == pytest.approx(expected, abs=1e-5), (prompt, text, user)


def test_a_batch_mixing_users_matches_scoring_each_user_separately(build, tokenizers, tmp_path):
    model = build()
    routers = routers_for(model, tmp_path)
    reward = smoe_reward(model, routers=routers, tokenizer=tokenizers["llama"])
    prompts = [f"what is the {topic} ?" for topic in TOPICS[:6]]
    completions = [[{"role": "assistant", "content": "a kind answer"}]] * 3 + ["no", "sure here is a poem", "yes"]
    users = ["alice", None, "bob", "bob", "alice", None]
    mixed = reward(prompts, completions, user=users)
    for user in ("alice", "bob", None):
        rows = [i for i, other in enumerate(users) if other == user]
        alone = reward([prompts[i] for i in rows], [completions[i] for i in rows], user=[user] * len(rows))
        assert [mixed[i] for i in rows] == pytest.approx(alone, abs=1e-6)
    assert reward(prompts, completions) == pytest.approx(reward(prompts, completions, user=[None] * 6))
    empty = reward(prompts[:1], [""])[0]  # a policy's empty completion: the template's empty assistant turn
    encoded = encode_pair(tokenizers["llama"], prompts[0], "", allow_empty=True)
    inputs = {k: torch.tensor([v]) for k, v in encoded.items()}
    with torch.no_grad():
        assert empty == pytest.approx(model(**inputs).logits.item(), abs=1e-6)
    with pytest.raises(InputError, match="user: no router for \\['carol'\\]"):
        reward(prompts[:1], completions[:1], user=["carol"])


def test_set_router_refuses_a_router_of_other_experts(build, tmp_path):
    model, other = build(), build()
    with torch.no_grad():
        other.head.experts.weight.add_(1.0)
    router_file = routers_for(other, tmp_path)["alice"]
    with pytest.raises(InputError, match="adapted on different experts"):
        set_router(model, router_file)
    previous = set_router(other, router_file)
    assert previous is not other.head.router


def test_smoe_reward_loads_a_checkpoint_by_path(checkpoint_and_data):
    model, tokenizer, _, folder = checkpoint_and_data
    prompts, completions = ["what is the cat ?", "hello"], ["a kind answer", [{"role": "assistant", "content": "hi"}]]
    from_path = smoe_reward(str(folder / "checkpoint"))(prompts, completions)
    assert from_path == pytest.approx(smoe_reward(model, tokenizer=tokenizer)(prompts, completions), abs=1e-6)


def test_the_readmes_grpo_snippet_runs(checkpoint_and_data, tmp_path, monkeypatch):
    """README "Use it in RL", as written, with the tiny checkpoint, router and policy in place of the real ones."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"## Use it in RL.*?```python\n(.*?)```", readme, re.S).group(1)
    model, _, _, folder = checkpoint_and_data
    router = routers_for(model, tmp_path)["alice"]
    policy = save_tiny_causal_lm(tmp_path / "policy")
    monkeypatch.setattr("hf_smoe.runtime.default_generator_path", lambda: policy)  # as the snippet imports it
    monkeypatch.chdir(tmp_path)
    for placeholder, path in (('"outputs/demo"', folder / "checkpoint"), ('"outputs/ana.safetensors"', router)):
        assert placeholder in snippet
        snippet = snippet.replace(placeholder, repr(str(path)))
    exec(snippet, {})
    assert (tmp_path / "outputs" / "grpo").is_dir()


def test_a_checkpoint_path_trains_with_its_own_tokenizer(checkpoint_and_data, tmp_path):
    folder = checkpoint_and_data[-1] / "checkpoint"
    trainer = SMoERewardTrainer(str(folder), config(tmp_path, max_steps=1),
                                train_dataset=trl_dataset("conversational explicit"))
    head = state(trainer.model.head)
    trainer.train()
    assert changed(head, state(trainer.model.head))
