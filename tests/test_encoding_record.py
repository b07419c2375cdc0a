"""One encoding for a checkpoint's whole life: `smoe train` records how its features were encoded, and every later
command reads the checkpoint through the same encoding unless a flag says otherwise (with one warning)."""

import json
import warnings

import pytest
import torch

from catalogue import run_cli
from hf_smoe import SMoERewardModel
from hf_smoe.data import load_pairs
from hf_smoe.features import EmbeddingCache, scoring_encoding, training_encoding
from hf_smoe.rewards import smoe_reward
from hf_smoe.runtime import load_checkpoint
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.training.job import split_for_training


def shard_files(cache) -> set:
    return {path for path in cache.rglob("*") if path.is_file()}


def test_eval_after_train_reuses_the_training_features_and_metrics(tmp_path, backbone_dirs):
    """Trained at max_length 64, the checkpoint records it; `smoe eval` on the training run's test split embeds no
    text again (no new file in the cache) and reproduces the training-time test metrics exactly."""
    pairs = generate_preference_set(60, seed=4)
    pairs.to_json(tmp_path / "pairs.jsonl")
    cache = tmp_path / "cache"
    trained = run_cli("train", "--dataset", tmp_path / "pairs.jsonl", "--backbone", backbone_dirs["llama"],
                      "--max-length", 64, "--epochs", 1, "--num-experts", 3, "--cache-dir", cache, "--output-dir",
                      tmp_path / "model")
    assert trained.code == 0, trained.stderr[-2000:]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["encoding"] == {"max_length": 64, "truncation": "prompt_oldest_first", "dtype": "float32"}
    training_metrics = json.loads((tmp_path / "model" / "results.json").read_text())["results"]

    test = split_for_training(load_pairs(tmp_path / "pairs.jsonl"), seed=0)["test"]  # the job's default split_seed
    test.to_json(tmp_path / "test.jsonl")
    before = shard_files(cache)
    evaluated = run_cli("eval", tmp_path / "model", "--dataset", tmp_path / "test.jsonl", "--cache-dir", cache,
                        "--output", tmp_path / "eval.json")
    assert evaluated.code == 0, evaluated.stderr[-2000:]
    assert "overrides" not in evaluated.stderr
    assert shard_files(cache) == before, "smoe eval embedded texts the training run had cached"
    metrics = json.loads((tmp_path / "eval.json").read_text())["results"]
    for name in ("accuracy", "routing_entropy", "global_entropy", "expert_correlation"):
        assert metrics[name] == training_metrics[name], name

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overridden = run_cli("eval", tmp_path / "model", "--dataset", tmp_path / "test.jsonl", "--cache-dir", cache,
                             "--output", tmp_path / "eval32.json", "--max-length", 32)
    warned = [str(w.message) for w in caught if "overrides the 64 tokens" in str(w.message)]
    assert overridden.code == 0 and len(warned) == 1, overridden.stderr[-2000:]
    assert shard_files(cache) != before  # other features: embedded at 32 tokens


def test_scoring_encoding_follows_the_record(monkeypatch, backbone_dirs, tokenizers, tmp_path):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    monkeypatch.delenv("HF_SMOE_DTYPE", raising=False)
    assert scoring_encoding(model.config)["max_length"] == 1024  # nothing recorded: the default
    model.config.encoding = training_encoding(48, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no override, no warning
        assert scoring_encoding(model.config) == {"max_length": 48, "dtype": torch.bfloat16}
    with pytest.warns(UserWarning, match="max_length 96 overrides the 48 tokens"):
        assert scoring_encoding(model.config, 96)["max_length"] == 96
    monkeypatch.setenv("HF_SMOE_DTYPE", "float32")
    with pytest.warns(UserWarning, match="HF_SMOE_DTYPE=float32 overrides the bfloat16"):
        assert scoring_encoding(model.config)["dtype"] == torch.float32


def test_smoe_reward_and_every_cache_use_the_recorded_length(tmp_path, backbone_dirs, tokenizers):
    """A long pair is cut at the recorded length by `smoe_reward` and by the embedding cache of the checkpoint,
    and both give the reward the model's own forward gives on that cut."""
    from hf_smoe.features import encode_batch
    from hf_smoe.training.job import save_checkpoint

    tokenizer = tokenizers["llama"]
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2, tokenizer=tokenizer)
    save_checkpoint(model, tokenizer, tmp_path / "checkpoint", training_encoding(24))
    prompt, response = "hello how are you " * 10, "good thanks " * 6
    loaded, _ = load_checkpoint(tmp_path / "checkpoint")
    expected = loaded(**encode_batch(tokenizer, [prompt], [response], max_length=24)).logits.item()
    uncut = loaded(**encode_batch(tokenizer, [prompt], [response])).logits.item()
    assert expected != pytest.approx(uncut, abs=1e-6)
    assert smoe_reward(tmp_path / "checkpoint")(prompts=[prompt], completions=[response])[0] == pytest.approx(
        expected, abs=1e-5)
    cache = EmbeddingCache.of_checkpoint(loaded, tokenizer, cache_dir=tmp_path / "cache", show_progress=False)
    assert cache.max_length == 24 and len(cache.encode((prompt, response))["input_ids"]) == 24
