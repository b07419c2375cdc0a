"""SMoETrainer: the paper's optimiser settings, logged terms, exact resume, token path = cached path; the trainer
family's one parameter grouping."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from datasets import Dataset

from hf_smoe import SMoERewardModel
from hf_smoe.features import EmbeddingCache, training_encoding
from hf_smoe.evaluation.evaluate import behaviour_metrics, head_outputs
from hf_smoe.losses import loss_weights
from hf_smoe.training.arguments import BackboneTuningTrainingArguments, SMoETrainingArguments
from hf_smoe.training.backbone_tuning import TopLayersRewardModel, TopLayersTrainer, load_tunable_backbone
from hf_smoe.training.trainer import PairCollator, SMoETrainer, tokenize_pairs
from hf_smoe.trl import SMoERewardTrainer, SMoERewardTrainerConfig

WORDS = ["cat", "dog", "sun", "rain", "code", "math", "poem", "story"]


def toy_pairs(n=96, seed=0):
    """Prompt topic decides whether 'kind' or 'short' answers are preferred."""
    g = torch.Generator().manual_seed(seed)
    rows = {"prompt": [], "chosen": [], "rejected": [], "category": []}
    for i in range(n):
        topic = WORDS[int(torch.randint(len(WORDS), (1,), generator=g))]
        animal = WORDS.index(topic) < 4
        good, bad = ("a kind answer", "a rude answer") if animal else ("a short answer", "a long answer")
        rows["prompt"].append([{"role": "user", "content": f"what is the {topic} ?"}])
        rows["chosen"].append(good)
        rows["rejected"].append(bad)
        rows["category"].append("animals" if animal else "other")
    return Dataset.from_dict(rows)


@pytest.fixture
def setup(backbone_dirs, tokenizers, tmp_path):
    tokenizer = tokenizers["llama"]

    def build(**overrides):
        torch.manual_seed(0)
        return SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3, tokenizer=tokenizer, **overrides)

    pairs = toy_pairs()
    cache = EmbeddingCache(build(), tokenizer, cache_dir=tmp_path / "cache", show_progress=False)
    features = cache.pair_features(pairs)
    return build, tokenizer, pairs, features.select(range(80)), features.select(range(80, 96))


def arguments(tmp_path, **overrides):
    settings = {"num_train_epochs": 2, "seed": 0, "disable_tqdm": True, "logging_steps": 5, **overrides}
    return SMoETrainingArguments(output_dir=str(tmp_path), **settings)


def head_state(model):
    return {name: tensor.detach().clone() for name, tensor in model.head.state_dict().items()}


def test_defaults_are_the_papers():
    args = SMoETrainingArguments(output_dir="unused")
    assert (args.learning_rate, args.router_learning_rate, args.warmup_steps) == (2e-3, 5e-4, 0.05)
    assert (args.per_device_train_batch_size, args.num_train_epochs) == (16, 3.0)


def test_training_updates_only_the_head_with_two_learning_rates(setup, tmp_path):
    build, _, _, train, valid = setup
    model = build()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = SMoETrainer(model, arguments(tmp_path), train_dataset=train, eval_dataset=valid)
    trainer.train()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, backbone_before[name]), name  # bit-identical frozen backbone
    by_learning_rate = {}
    for group in trainer.optimizer.param_groups:
        by_learning_rate.setdefault(group["initial_lr"], set()).update(id(p) for p in group["params"])
    assert by_learning_rate == {2e-3: {id(p) for p in model.head.experts.parameters()},
                                5e-4: {id(p) for p in model.head.router.parameters()}}
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"rm", "local_sparsity", "global_balance", "diversity", "uniform_prior"} <= logged
    assert {"eval_accuracy", "eval_routing_entropy", "eval_global_entropy", "eval_expert_correlation"} <= logged


@pytest.mark.parametrize("preset", ["sparse", "static"])
def test_the_optimizer_comes_from_the_training_arguments(setup, tmp_path, preset):
    """`--optim`, betas and weight decay are honoured; biases and a static router's logits get no weight decay."""
    build, _, _, train, valid = setup
    model = build(preset=preset)
    args = arguments(tmp_path, optim="adamw_torch", adam_beta1=0.8, weight_decay=0.1, max_steps=1, eval_strategy="no")
    trainer = SMoETrainer(model, args, train_dataset=train)
    trainer.train()
    assert type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer) \
        is torch.optim.AdamW
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(group["betas"] == (0.8, 0.999) for group in trainer.optimizer.param_groups)
    for name, parameter in model.head.named_parameters():
        expected = 0.0 if name.endswith(("bias", "logits")) else 0.1
        assert decay[id(parameter)] == expected, name
    assert len(decay) == len(list(model.head.parameters()))


def optimizer_table(trainer) -> dict:
    """{parameter name: (learning rate, weight decay)} of the optimizer `trainer` builds."""
    trainer.create_optimizer()
    names = {id(parameter): name for name, parameter in trainer.model.named_parameters()}
    table = {names[id(p)]: (group["lr"], group["weight_decay"]) for group in trainer.optimizer.param_groups
             for p in group["params"]}
    assert len(table) == sum(len(group["params"]) for group in trainer.optimizer.param_groups)  # one group each
    return table


def expected_table(model, rates: dict, weight_decay: float) -> dict:
    """The same, from the parameter names alone: every trainable parameter, at its part's rate (the backbone, the
    router, else the head's experts), without weight decay for biases, norms and a static router's logits."""
    table = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = "backbone" if name.startswith("backbone.") else "router" if ".router." in name else "experts"
            plain = name.endswith(("bias", "logits")) or any("norm" in piece for piece in name.split("."))
            table[name] = (rates[part], 0.0 if plain else weight_decay)
    return table


@pytest.mark.parametrize("preset", ["sparse", "static"])
def test_every_trainer_of_the_family_groups_parameters_alike(setup, backbone_dirs, tmp_path, preset):
    """One grouping for the optimizer: the same model with a trainable backbone gets the same groups from
    `SMoETrainer` and TRL's `SMoERewardTrainer`, and the backbone tuning's trainer gives its head one rate; each
    is what the parameter names say."""
    build, tokenizer, *_ = setup
    rates = {"backbone": 1e-3, "experts": 1e-3, "router": 3e-4}
    args = arguments(tmp_path, learning_rate=1e-3, router_learning_rate=3e-4, layers_learning_rate=1e-3,
                     weight_decay=0.1, eval_strategy="no")
    smoe = optimizer_table(SMoETrainer(build(preset=preset, freeze_backbone=False), args))
    config = SMoERewardTrainerConfig(output_dir=str(tmp_path / "trl"), learning_rate=1e-3, experts_learning_rate=1e-3,
                                     router_learning_rate=3e-4, weight_decay=0.1, bf16=False, report_to="none")
    pairs = Dataset.from_list([{"prompt": "what is the cat ?", "chosen": "a kind answer", "rejected": "no"}] * 4)
    trl = optimizer_table(SMoERewardTrainer(build(preset=preset, freeze_backbone=False), config,
                                            train_dataset=pairs, processing_class=tokenizer))
    tuning_args = BackboneTuningTrainingArguments(output_dir=str(tmp_path / "tune"), learning_rate=1e-3,
                                                  weight_decay=0.1, eval_strategy="no")
    model = build(preset=preset, freeze_backbone=False)
    tuned = optimizer_table(TopLayersTrainer(model=model, args=tuning_args, head_learning_rate=3e-4))
    assert smoe == trl == expected_table(model, rates, 0.1)
    assert {lr for lr, _ in smoe.values()} == {1e-3, 3e-4} and {decay for _, decay in smoe.values()} == {0.0, 0.1}
    assert tuned == expected_table(model, {"backbone": 1e-3, "experts": 3e-4, "router": 3e-4}, 0.1)

    backbone, _, _, top = load_tunable_backbone(backbone_dirs["llama"], 1)
    top_layers = TopLayersRewardModel(top, backbone.config.hidden_size)
    tuned = optimizer_table(TopLayersTrainer(model=top_layers, args=tuning_args, head_learning_rate=3e-4))
    assert tuned == expected_table(top_layers, {"backbone": 1e-3, "experts": 3e-4}, 0.1)
    assert {name.split(".")[1] for name in tuned if name.startswith("backbone.")} == {"layers", "norm"}


def test_trainer_evaluation_matches_the_metrics_on_the_whole_set(setup, tmp_path):
    """`evaluate` runs the Trainer's loop in batches of `per_device_eval_batch_size` and `compute_metrics` on the
    gathered set: the same numbers as the metrics computed on all pairs at once (to float rounding: the batches'
    matmuls round differently)."""
    build, _, _, train, valid = setup
    model = build()
    expected = behaviour_metrics(head_outputs(model.head, valid.with_format("torch")), loss_weights(model.config))
    trainer = SMoETrainer(model, arguments(tmp_path, per_device_eval_batch_size=7), eval_dataset=valid)
    metrics = trainer.evaluate()
    for name, value in expected.items():
        assert metrics[f"eval_{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_training_learns_the_toy_preference(setup, tmp_path):
    build, _, _, train, valid = setup
    model = build(preset="vanilla")
    before = behaviour_metrics(head_outputs(model.head, valid.with_format("torch")),
                                                 {"lambda_local": 0, "lambda_global": 0, "lambda_div": 0})
    args = arguments(tmp_path, num_train_epochs=30, learning_rate=1e-2, router_learning_rate=1e-2, eval_strategy="no")
    SMoETrainer(model, args, train_dataset=train, eval_dataset=valid).train()
    after = behaviour_metrics(head_outputs(model.head, valid.with_format("torch")),
                              {"lambda_local": 0, "lambda_global": 0, "lambda_div": 0})
    assert after["rm"] < before["rm"] - 0.2 and after["accuracy"] == 1.0, (before, after)


def test_resuming_from_a_checkpoint_gives_the_same_final_weights(setup, tmp_path):
    build, _, _, train, valid = setup
    uninterrupted = build()
    SMoETrainer(uninterrupted, arguments(tmp_path / "a"), train_dataset=train, eval_dataset=valid).train()
    args = arguments(tmp_path / "b", save_strategy="steps", save_steps=4)
    SMoETrainer(build(), args, train_dataset=train, eval_dataset=valid).train()
    resumed = build()
    SMoETrainer(resumed, args, train_dataset=train, eval_dataset=valid).train(
        resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    first = head_state(uninterrupted)
    for name, tensor in head_state(resumed).items():
        assert torch.equal(tensor, first[name]), name


def test_token_path_matches_the_cached_path(setup, tmp_path):
    build, tokenizer, pairs, train, valid = setup
    cached = build()
    SMoETrainer(cached, arguments(tmp_path / "c", eval_strategy="no"), train_dataset=train).train()
    tokens = tokenize_pairs(pairs.select(range(80)), tokenizer)
    end_to_end = build()
    SMoETrainer(end_to_end, arguments(tmp_path / "t", eval_strategy="no"), train_dataset=tokens,
                data_collator=PairCollator(tokenizer)).train()
    expected = head_state(cached)
    for name, tensor in head_state(end_to_end).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0)


def test_routing_collapse_warns(setup, tmp_path):
    build, _, _, train, valid = setup
    model = build()
    with torch.no_grad():
        model.head.router.output.bias.copy_(torch.tensor([30.0, 0.0, 0.0]))  # every prompt to expert 0
    trainer = SMoETrainer(model, arguments(tmp_path), train_dataset=train, eval_dataset=valid)
    with pytest.warns(UserWarning, match="Routing collapse"):
        metrics = trainer.evaluate()
    assert metrics["eval_global_entropy"] < 0.01
    healthy = SMoETrainer(build(), arguments(tmp_path), train_dataset=train, eval_dataset=valid)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        healthy.evaluate()


def test_bad_dataset_is_named(setup, tmp_path):
    build, _, pairs, _, _ = setup
    with pytest.raises(ValueError, match="train_dataset"):
        SMoETrainer(build(), arguments(tmp_path), train_dataset=pairs.remove_columns("chosen").rename_column(
            "rejected", "chosen_input").select(range(4)))


def test_train_preset_trains_with_the_training_overrides(setup, backbone_dirs, tmp_path):
    """Both learning rates 0: the head leaves training exactly as a fresh head of the same seed starts."""
    from hf_smoe.training.job import train_preset

    build, tokenizer, _, train, validation = setup
    features = {"train": train, "validation": validation, "test": validation}
    model, _ = train_preset(backbone_dirs["llama"], tokenizer, features, "sparse", 3, 0, 1, str(tmp_path),
                            {"learning_rate": 0.0, "router_learning_rate": 0.0})
    torch.manual_seed(0)
    fresh = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3, tokenizer=tokenizer, preset="sparse")
    for name, tensor in head_state(fresh).items():
        assert torch.equal(head_state(model)[name], tensor), name
    trained, _ = train_preset(backbone_dirs["llama"], tokenizer, features, "sparse", 3, 0, 1, str(tmp_path))
    assert not torch.equal(head_state(trained)["experts.weight"], head_state(fresh)["experts.weight"])


def test_saving_a_checkpoint_leaves_the_callers_tokenizer_as_it_is(backbone_dirs, tmp_path):
    """The plain fallback template is written into the saved copy only: the caller's tokenizer (whose template is
    part of the embedding cache's key) is unchanged."""
    from transformers import AutoTokenizer

    from hf_smoe.modeling.modeling_smoe import PLAIN_CHAT_TEMPLATE
    from hf_smoe.training.job import save_checkpoint
    from hf_smoe.testing import word_tokenizer

    tokenizer = word_tokenizer("bert")
    assert tokenizer.chat_template is None
    save_checkpoint(SMoERewardModel.from_backbone(backbone_dirs["bert"], num_experts=2), tokenizer, tmp_path / "ck",
                    training_encoding(1024))
    assert tokenizer.chat_template is None
    assert AutoTokenizer.from_pretrained(tmp_path / "ck").chat_template == PLAIN_CHAT_TEMPLATE


@pytest.mark.slow
def test_a_saved_tokenizer_loads_with_a_bare_auto_tokenizer_where_hf_smoe_is_imported(checkpoint_and_data):
    """transformers reads config.json before the tokenizer files; importing hf_smoe registers our model_type, so
    no trust_remote_code question is asked (stdin closed: a question would fail or warn)."""
    checkpoint_dir = checkpoint_and_data[-1] / "checkpoint"
    loader = ("import sys, hf_smoe; from transformers import AutoTokenizer; "
              "t = AutoTokenizer.from_pretrained(sys.argv[1]); print(t('hello there').input_ids)")
    loaded = subprocess.run([sys.executable, "-c", loader, str(checkpoint_dir)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert loaded.returncode == 0, loaded.stderr
    assert "custom code" not in loaded.stderr and "model of type" not in loaded.stderr, loaded.stderr
    from transformers import AutoTokenizer
    expected = AutoTokenizer.from_pretrained(checkpoint_dir)("hello there").input_ids
    assert loaded.stdout.strip() == str(expected)
