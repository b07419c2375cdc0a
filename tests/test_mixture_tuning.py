"""`smoe train --tune_layers k`: the backbone's top k layers train with the head under the mixture objective, from
states cached below them; the checkpoint is a normal full one that scores exactly as it trained."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModel

from catalogue import run_cli
from conftest import encode_batch
from hf_smoe.data import load_pairs
from hf_smoe.errors import InputError
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.features import FEATURE_COLUMNS, EmbeddingCache, HiddenStateCache, encode_pair
from hf_smoe.training import MixtureStatesCollator, TopLayersMixture, state_pairs, tuned_pair_features
from test_remote_code import LOADER


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    generate_preference_set(48, seed=3).to_json(path)
    return path


def train(pairs_file, backbone, output, *extra):
    result = run_cli("train", "--dataset", pairs_file, "--backbone", backbone, "--max-length", 64, "--epochs", 2,
                     "--num-experts", 3, "--tune_layers", 1, "--layers_learning_rate", 1e-3, "--cache-dir",
                     output.parent / "cache", "--output-dir", output, "--disable_tqdm", "true", *extra)
    assert result.code == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def tuned(pairs_file, backbone_dirs, tmp_path_factory):
    return train(pairs_file, backbone_dirs["llama"], tmp_path_factory.mktemp("tuned") / "model")


def test_only_the_top_layers_change_and_the_checkpoint_is_a_frozen_reward_model(tuned, backbone_dirs):
    original = load_file(os.path.join(backbone_dirs["llama"], "model.safetensors"))
    saved = {name.removeprefix("backbone."): tensor for name, tensor in load_file(tuned / "model.safetensors").items()
             if name.startswith("backbone.")}
    assert set(saved) == set(original)
    top = [name for name in saved if name.startswith(("layers.1.", "norm."))]
    lower = [name for name in saved if name not in top]
    assert top and all(torch.equal(saved[name], original[name]) for name in lower)  # bit-identical below
    assert any(not torch.equal(saved[name], original[name]) for name in top)  # the top layer trained
    config = json.loads((tuned / "config.json").read_text())
    assert config["freeze_backbone"] is True and config["encoding"]["max_length"] == 64
    record = json.loads((tuned / "results.json").read_text())
    assert record["job"]["model"]["tune_layers"] == 1 and 0.0 <= record["results"]["accuracy"] <= 1.0


# Pairs whose texts share the prompt, the prompt and the responses' first words, or (truncated to 64 tokens, the
# rejected side keeping less of its long prompt) almost nothing: packing each pair in one row must not matter.
LONG_PROMPT = " ".join(["tell me about the cat and the dog"] * 8)
PACKED_PAIRS = Dataset.from_dict({
    "prompt": ["hello how are you today", "what is a cat ?", LONG_PROMPT],
    "chosen": ["good thanks", "a kind dog , good", "no"],
    "rejected": ["bad", "a kind of cat", " ".join(["the dog is a good cat"] * 6)]})


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_tuned_rewards_equal_a_full_forward_of_the_saved_checkpoint(tuned, tokenizers, tmp_path, pooling):
    """What training computed (cached states below, the top layer above, each pair one packed row) is what the
    saved model computes in one forward pass of each text, to 1e-5 in fp32."""
    model = AutoModel.from_pretrained(tuned).eval()
    model.config.pooling = pooling
    tokenizer = tokenizers["llama"]
    with torch.no_grad():
        wrapper = TopLayersMixture(model, 1)
        cache = HiddenStateCache(wrapper.bottom, tokenizer, layer=1, cache_dir=tmp_path, max_length=64,
                                 dtype=torch.float32, show_progress=False)
        keyed = state_pairs(PACKED_PAIRS, cache)
        assert keyed["shared_length"][1] > keyed["prompt_length"][1] > keyed["shared_length"][2]  # both kinds
        prompts, chosen, rejected = wrapper.embed_pairs(**MixtureStatesCollator(cache)(list(keyed)))
        split = wrapper(prompt_embeddings=prompts, response_embeddings=chosen)
        full = {side: model.embed(**side_batch(tokenizer, side)) for side in ("chosen", "rejected")}
        reward = model(**side_batch(tokenizer, "chosen"))
    torch.testing.assert_close(prompts, full["chosen"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(chosen, full["chosen"][1], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, full["rejected"][1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split.logits, reward.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(split.routing_weights, reward.routing_weights, atol=1e-5, rtol=0)


def side_batch(tokenizer, side: str) -> dict:
    """The padded model inputs of one side's texts of `PACKED_PAIRS`, with their prompt lengths."""
    encodings = [encode_pair(tokenizer, prompt, response, max_length=64)
                 for prompt, response in zip(PACKED_PAIRS["prompt"], PACKED_PAIRS[side])]
    tokenizer.padding_side = "right"
    batch = tokenizer.pad([{"input_ids": e["input_ids"]} for e in encodings], return_tensors="pt")
    return {**batch, "prompt_lengths": torch.tensor([e["prompt_lengths"] for e in encodings])}


def test_tuned_pair_features_equal_the_embedding_cache_of_the_saved_checkpoint(tuned, tokenizers, pairs_file,
                                                                             tmp_path):
    """Measuring tuned heads from the cached states below the tuned layers gives the features a full forward pass
    of the saved model gives (fp32), pair by pair, with the pairs' metadata."""
    model = AutoModel.from_pretrained(tuned).eval()
    tokenizer = tokenizers["llama"]
    pairs = load_pairs(str(pairs_file)).select(range(10))
    wrapper = TopLayersMixture(model, 1)
    states = HiddenStateCache(wrapper.bottom, tokenizer, layer=1, cache_dir=tmp_path, max_length=64,
                              dtype=torch.float32, show_progress=False)
    measured = tuned_pair_features(wrapper, states, pairs, batch_pairs=4)
    full = EmbeddingCache(model, tokenizer, cache_dir=tmp_path, max_length=64, dtype=torch.float32,
                          show_progress=False).pair_features(pairs)
    for column in FEATURE_COLUMNS:
        torch.testing.assert_close(torch.tensor(measured[column]), torch.tensor(full[column]), atol=1e-5, rtol=0)
    assert measured["category"] == pairs["category"]


@pytest.mark.parametrize("preset", ["single", "vanilla", "micro", "sparse"])
def test_every_preset_tunes(preset, pairs_file, backbone_dirs, tmp_path):
    output = train(pairs_file, backbone_dirs["llama"], tmp_path / "model", "--preset", preset,
                   *(["--num-experts", 1] if preset == "single" else []))
    results = json.loads((output / "results.json").read_text())["results"]
    assert 0.0 <= results["accuracy"] <= 1.0
    assert json.loads((output / "config.json").read_text())["preset"] == preset


def test_pairs_batch_by_length_when_asked(pairs_file, backbone_dirs, tokenizers, tmp_path):
    """Each pair's `length` is its packed row's tokens, both texts less the prefix they share (what
    `--train_sampling_strategy group_by_length` sorts by), and a run with it trains."""
    pairs = load_pairs(str(pairs_file)).select(range(6))
    model = AutoModel.from_pretrained(backbone_dirs["llama"])
    cache = HiddenStateCache(model, tokenizers["llama"], layer=2, cache_dir=tmp_path, max_length=64,
                             show_progress=False)
    expected = []
    for pair in pairs:
        chosen, rejected = (encode_pair(tokenizers["llama"], pair["prompt"], pair[side], max_length=64)["input_ids"]
                            for side in ("chosen", "rejected"))
        shared = min(len(os.path.commonprefix([chosen, rejected])), len(chosen) - 1, len(rejected) - 1)
        expected.append(len(chosen) + len(rejected) - shared)
    assert state_pairs(pairs, cache)["length"] == expected
    output = train(pairs_file, backbone_dirs["llama"], tmp_path / "model", "--train_sampling_strategy",
                   "group_by_length")
    assert 0.0 <= json.loads((output / "results.json").read_text())["results"]["accuracy"] <= 1.0


def test_tuning_with_lora_merges_the_adapters(pairs_file, backbone_dirs, tmp_path):
    pytest.importorskip("peft")
    output = train(pairs_file, backbone_dirs["llama"], tmp_path / "model", "--lora_rank", 2)
    saved = load_file(output / "model.safetensors")
    assert not any("lora" in name for name in saved)  # a plain backbone again
    original = load_file(os.path.join(backbone_dirs["llama"], "model.safetensors"))
    changed = [name for name in original if not torch.equal(saved[f"backbone.{name}"], original[name])]
    assert changed and all(name.startswith("layers.1.") for name in changed)  # adapters only on the top layer


def test_tuned_checkpoint_loads_without_hf_smoe(tuned, tokenizers, tmp_path):
    batch = encode_batch(tokenizers["llama"], padding_side="left")
    (tmp_path / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    with torch.no_grad():
        expected = AutoModel.from_pretrained(tuned).eval()(**batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    subprocess.run([sys.executable, "-I", "-c", LOADER, str(tuned), str(tmp_path / "batch.json"),
                    str(tmp_path / "out.json")], check=True, cwd=tmp_path, env=env, timeout=300)
    outputs = json.loads((tmp_path / "out.json").read_text())["AutoModel"]
    torch.testing.assert_close(torch.tensor(outputs["logits"]), expected.logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_processes_tune_as_one(pairs_file, backbone_dirs, tmp_path):
    """torchrun with 2 processes x batch 8 ends with the weights 1 process x batch 16 ends with."""
    def args(output, cache, batch):
        return [str(a) for a in ("train", "--dataset", pairs_file, "--backbone", backbone_dirs["llama"],
                                 "--max_length", 64, "--num_experts", 3, "--max_steps", 4, "--tune_layers", 1,
                                 "--cache_dir", cache, "--output_dir", output, "--per_device_train_batch_size",
                                 batch, "--router_jitter_noise", 0, "--router_dropout", 0, "--disable_tqdm", "true")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                               "hf_smoe.cli", *args(tmp_path / "two", tmp_path / "cache2", 8)],
                              capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    # on failure: the start and the end of what the ranks printed, and the cache folders they wrote (one
    # hidden-state fingerprint is expected; two would mean the ranks disagree on it)
    folders = sorted(str(path.relative_to(tmp_path)) for path in (tmp_path / "cache2").glob("*/shard-*"))
    assert launched.returncode == 0, f"{launched.stderr[:2000]}\n...\n{launched.stderr[-3000:]}\n{folders}"
    assert run_cli(*args(tmp_path / "one", tmp_path / "cache1", 16)).code == 0
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert any(not torch.equal(one[name], load_file(os.path.join(backbone_dirs["llama"], "model.safetensors"))[
        name.removeprefix("backbone.")]) for name in one if name.startswith("backbone.layers.1."))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)


def test_attention_without_a_custom_mask_is_refused(tuned):
    """The packed pairs need a 4-D attention mask; flash-attention kernels would silently ignore it."""
    model = AutoModel.from_pretrained(tuned)
    model.backbone.config._attn_implementation = "flash_attention_2"
    with pytest.raises(InputError, match="tune_layers: the backbone computes attention with 'flash_attention_2'"):
        TopLayersMixture(model, 1)
