"""Backbone reward-tuning: the split backbone computes what the whole one does, the hidden-state cache stores each
text's states once, and tuning from the cache writes a plain backbone folder equal to tuning the slow way."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from catalogue import run_cli
from transformers import AutoModel, AutoTokenizer

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.training.arguments import BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments
from hf_smoe.training.backbone_tuning import split_layers, tune_backbone
from hf_smoe.reproduce.backbone import tuning_splits, with_unsampled_pairs
from hf_smoe.reproduce.reproduction_datasets import reproduction_data, reproduction_splits
from hf_smoe.features import HiddenStateCache, text_key
from hf_smoe.runtime.loading import resolve_backbone
from hf_smoe.errors import InputError
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.testing import save_tiny_backbone
from hf_smoe.training.job import split_for_training

TEXTS = [("hello how are you today", "good thanks"), ("what is a cat ?", "a kind dog , yes"), ("why ?", "because")]


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("three-layers"), "llama", num_hidden_layers=3)


def padded_batch(tokenizer, texts):
    tokenizer.padding_side = "right"
    return tokenizer.pad([{"input_ids": encode_pair(tokenizer, *text)["input_ids"]} for text in texts],
                         return_tensors="pt")


def test_bottom_then_top_is_the_whole_backbone(three_layers):
    backbone, tokenizer = AutoModel.from_pretrained(three_layers).eval(), AutoTokenizer.from_pretrained(three_layers)
    batch = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        whole = backbone(**batch, output_hidden_states=True)
        bottom, top = split_layers(backbone, 2)
        states = bottom(**batch).last_hidden_state
        final = top(inputs_embeds=states, attention_mask=batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(states[real], whole.hidden_states[1][real], atol=1e-6, rtol=0)  # entering layer 1
    torch.testing.assert_close(final[real], whole.last_hidden_state[real], atol=1e-5, rtol=0)
    assert top.layers[0] is backbone.layers[1] and list(bottom.layers) == [backbone.layers[0]]
    assert len(backbone.layers) == 3 and isinstance(backbone.norm, torch.nn.Module)  # the backbone is untouched


@pytest.mark.parametrize("layers", [0, 4, True])
def test_split_layers_refuses_a_count_outside_the_backbone(three_layers, layers):
    with pytest.raises(InputError, match=r"layers: must be an integer from 1 to 3 \(the backbone has 3 layers\)"):
        split_layers(AutoModel.from_pretrained(three_layers), layers)


def test_split_layers_refuses_an_encoder_without_layers(backbone_dirs):
    with pytest.raises(InputError, match="backbone: BertModel has no `layers` list.*built like Llama"):
        split_layers(AutoModel.from_pretrained(backbone_dirs["bert"]), 1)


def test_the_hidden_state_cache_stores_each_texts_states_once(three_layers, tmp_path, monkeypatch):
    backbone, tokenizer = AutoModel.from_pretrained(three_layers).eval(), AutoTokenizer.from_pretrained(three_layers)
    bottom, _ = split_layers(backbone, 1)
    cache = HiddenStateCache(bottom, tokenizer, layer=2, cache_dir=tmp_path, show_progress=False, batch_tokens=40)
    keys = cache.embed(TEXTS)
    assert list(keys.astype(str)) == [text_key(*text) for text in TEXTS]
    for state, text in zip(cache.states(keys), TEXTS):
        with torch.no_grad():
            alone = bottom(**padded_batch(tokenizer, [text])).last_hidden_state[0]
        assert state.shape == alone.shape  # (T, H): every token of the text, no padding
        torch.testing.assert_close(state, alone, atol=1e-5, rtol=0)
    again = HiddenStateCache(bottom, tokenizer, layer=2, cache_dir=tmp_path, show_progress=False)
    monkeypatch.setattr(again, "_forward", lambda batch: pytest.fail("a cached text was computed again"))
    again.embed(TEXTS[::-1])
    other_layer = HiddenStateCache(split_layers(backbone, 2)[0], tokenizer, layer=1, cache_dir=tmp_path,
                                   show_progress=False)
    assert other_layer.directory != cache.directory


def tune(backbone, data_file, output_dir, cache_dir, tuning_options=None, **options):
    data = DataArguments(dataset=str(data_file), max_length=64, cache_dir=str(cache_dir))
    tuning = BackboneTuningArguments(backbone=backbone, **{"layers": 1, "head_learning_rate": 1e-2,
                                                           **(tuning_options or {})})
    training = BackboneTuningTrainingArguments(output_dir=str(output_dir), num_train_epochs=2, learning_rate=3e-3,
                                               seed=0, disable_tqdm=True, logging_strategy="no")
    return tune_backbone(data, tuning, training, **options)


def test_tuning_from_the_cache_writes_a_plain_backbone_equal_to_tuning_the_slow_way(three_layers, tmp_path):
    pairs = generate_preference_set(60, seed=1)
    pairs.to_json(tmp_path / "pairs.jsonl")
    results = tune(three_layers, tmp_path / "pairs.jsonl", tmp_path / "tuned", tmp_path / "cache")
    slow = tune(three_layers, tmp_path / "pairs.jsonl", tmp_path / "slow", tmp_path / "cache", recompute_states=True)

    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config  # plain transformers loads it
    original = AutoModel.from_pretrained(three_layers).state_dict()
    tuned = AutoModel.from_pretrained(tmp_path / "tuned").state_dict()
    recomputed = AutoModel.from_pretrained(tmp_path / "slow").state_dict()
    for name, value in original.items():
        if name.startswith(("layers.2.", "norm.")):
            assert not torch.equal(tuned[name], value), name  # the top layer and the final norm were tuned
        else:
            assert torch.equal(tuned[name], value), name  # the frozen lower layers and embeddings are untouched
        torch.testing.assert_close(tuned[name], recomputed[name], atol=1e-4, rtol=0)
    assert 0.0 <= results["validation_accuracy"] <= 1.0
    assert results["probe_validation_accuracy"] is None  # the head started at random (the default)
    assert results["validation_accuracy"] == pytest.approx(slow["validation_accuracy"], abs=0.05)
    record = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert record["job"]["tuning"]["layers"] == 1 and record["results"]["train_pairs"] == results["train_pairs"]
    assert not (tmp_path / "tuned" / "trainer").exists()
    SMoERewardModel.from_backbone(str(tmp_path / "tuned"), num_experts=2)  # and any --backbone takes it
    assert resolve_backbone(str(tmp_path / "tuned")) == str(tmp_path / "tuned")
    assert np.isfinite(results["seconds_per_epoch"])


def test_lora_tuning_moves_each_top_linear_map_by_a_rank_r_update_and_writes_a_plain_backbone(three_layers, tmp_path):
    """--lora_rank r: the written folder holds the merged weights W + (alpha / r) B A, so each linear map of the top
    layers moved by a matrix of rank exactly r; norms, embeddings and the lower layer are untouched, no adapter key
    is left, and the trainable count is LoRA's r (in + out) per map."""
    generate_preference_set(40, seed=4).to_json(tmp_path / "pairs.jsonl")
    rank = 2
    results = tune(three_layers, tmp_path / "pairs.jsonl", tmp_path / "lora", tmp_path / "cache",
                   {"layers": 2, "lora_rank": rank})
    original = AutoModel.from_pretrained(three_layers)
    tuned = AutoModel.from_pretrained(tmp_path / "lora").state_dict()
    assert tuned.keys() == original.state_dict().keys()  # no lora_A / lora_B / base_layer keys
    maps = {f"layers.{index}.{name}.weight": module for index in (1, 2)
            for name, module in original.layers[index].named_modules() if isinstance(module, torch.nn.Linear)}
    assert len(maps) == 14  # q, k, v, o, gate, up, down in each of the two top layers
    for name, value in original.state_dict().items():
        update = (tuned[name] - value).double().numpy()
        if name in maps:
            assert np.linalg.matrix_rank(update, tol=1e-7) == rank, name
        else:
            assert not update.any(), name  # the lower layer, the embeddings and every norm
    assert results["trainable_layer_parameters"] == sum(rank * (m.in_features + m.out_features) for m in maps.values())


def test_lora_without_peft_is_one_clear_error(three_layers, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # what `import peft` meets where it is not installed
    generate_preference_set(20, seed=5).to_json(tmp_path / "pairs.jsonl")
    with pytest.raises(InputError, match=r"lora_rank: LoRA needs peft; install it with pip install 'hf-smoe\[trl\]'"):
        tune(three_layers, tmp_path / "pairs.jsonl", tmp_path / "lora", tmp_path / "cache", {"lora_rank": 4})
    assert not (tmp_path / "lora").exists()


def test_the_head_starts_at_the_bradley_terry_probe_of_the_untuned_layers(three_layers, tmp_path):
    """LP-FT: before any step, the head is the optimal linear probe of the pooled final states, computed here
    independently by the whole (untuned) backbone on each text's tokens."""
    from hf_smoe.training.backbone_tuning import (CachedStatesCollator, TopLayersRewardModel, initialize_head_by_probe,
                                                  keyed_pairs)
    from hf_smoe.evaluation.probes import bradley_terry_probe

    backbone, tokenizer = AutoModel.from_pretrained(three_layers).eval(), AutoTokenizer.from_pretrained(three_layers)
    pairs = generate_preference_set(12, seed=2)
    bottom, top = split_layers(backbone, 1)
    cache = HiddenStateCache(bottom, tokenizer, layer=2, cache_dir=tmp_path, show_progress=False, max_length=64)
    model = TopLayersRewardModel(top, backbone.config.hidden_size)
    initialize_head_by_probe(model, keyed_pairs(pairs, cache), CachedStatesCollator(cache), batch_size=5)

    def final_states(side):
        ids = [torch.tensor([encode_pair(tokenizer, prompt, response, 64)["input_ids"]])
               for prompt, response in zip(pairs["prompt"], pairs[side])]
        with torch.no_grad():
            return torch.stack([backbone(input_ids=text).last_hidden_state[0, -1] for text in ids])

    differences = final_states("chosen") - final_states("rejected")
    expected = bradley_terry_probe(differences)
    # the two inputs agree to 1e-7; L-BFGS stops within ~1% on this small, ill-conditioned fit
    assert torch.nn.functional.cosine_similarity(model.head.weight[0], expected, dim=0) > 0.9995
    torch.testing.assert_close(model.head.weight[0], expected, atol=0.05, rtol=0.05)
    assert torch.equal(differences @ model.head.weight[0] > 0, differences @ expected > 0)
    assert model.head.bias.item() == 0.0


def test_reproduce_backbone_tunes_on_the_reproductions_train_split_and_never_reads_test(three_layers, tmp_path):
    """`smoe reproduce backbone` tunes on exactly the train split `smoe reproduce` trains heads on: the hidden-state
    cache holds the train and validation texts and not one test text."""
    result = run_cli("reproduce", "backbone", "--datasets", "demo", "--size", "demo=30", "--backbone", three_layers,
                     "--layers", "1", "--epochs", "1", "--head-init", "probe", "--lora-rank", "2", "--output-dir",
                     str(tmp_path / "tuned"), "--cache-dir", str(tmp_path / "cache"), "--logging_strategy", "no")
    assert result.code == 0, result.stderr
    record = json.loads((tmp_path / "tuned" / "demo" / "results.json").read_text())
    splits = reproduction_splits(reproduction_data("demo", 30))
    assert record["results"]["train_pairs"] == len(splits["train"]) and record["job"]["reproduction"] == "demo"
    probe, tuned = record["results"]["probe_validation_accuracy"], record["results"]["validation_accuracy"]
    assert record["job"]["tuning"]["head_init"] == "probe" and record["job"]["tuning"]["lora_rank"] == 2
    assert f"| demo | 1 of 3 (LoRA r = 2) | {len(splits['train'])} | {100 * probe:.1f} → {100 * tuned:.1f} |" in (
        tmp_path / "tuned" / "backbone.md").read_text()
    backbone, tokenizer = AutoModel.from_pretrained(three_layers), AutoTokenizer.from_pretrained(three_layers)
    cache = HiddenStateCache(split_layers(backbone, 1)[0], tokenizer, layer=2, cache_dir=tmp_path / "cache",
                             max_length=reproduction_data("demo").max_length, show_progress=False)
    assert record["results"]["hidden_state_cache"] == str(cache.directory)

    def stored(split):
        keys = [text_key(p, r) for side in ("chosen", "rejected") for p, r in zip(split["prompt"], split[side])]
        return cache.store.rows(np.array(keys, dtype="S64")) >= 0

    assert stored(splits["train"]).all() and stored(splits["validation"]).all()
    assert not stored(splits["test"]).any()


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_unsampled_pairs_join_train_unless_their_prompt_is_held_out():
    """Every pool pair joins train once, except a pair already sampled and any pair of a validation or test
    prompt; validation and test are unchanged."""
    pairs = generate_preference_set(40, seed=5)
    splits = split_for_training(pairs.select(range(0, 80, 2)), 0, validation=0.25, test=0.25)
    extended = with_unsampled_pairs(splits, pairs, "prompt")

    def triples(split):
        return [(json.dumps(p), c, r) for p, c, r in zip(split["prompt"], split["chosen"], split["rejected"])]

    held_out = {json.dumps(p) for name in ("validation", "test") for p in splits[name]["prompt"]}
    expected = set(triples(pairs)) - {t for t in triples(pairs) if t[0] in held_out}
    assert sorted(triples(extended["train"])) == sorted(expected) and len(expected) > len(splits["train"])
    assert all(extended[name]["chosen"] == splits[name]["chosen"] for name in ("validation", "test"))


def test_unsampled_hh_tuning_pairs_keep_every_test_prompt_out():
    splits, max_length = tuning_splits("hh", None, "unsampled", SHARED_DATA)
    sampled = reproduction_splits(reproduction_data("hh"), SHARED_DATA)
    assert max_length == reproduction_data("hh").max_length
    held_out = {json.dumps(p) for name in ("validation", "test") for p in sampled[name]["prompt"]}
    assert not any(json.dumps(p) in held_out for p in splits["train"]["prompt"])
    assert splits["test"]["chosen"] == sampled["test"]["chosen"]
    assert splits["train"].select(range(len(sampled["train"])))["chosen"] == sampled["train"]["chosen"]
    assert len(splits["train"]) > 4 * len(sampled["train"])  # 4,642 HH test pairs, 1,400 sampled
    with pytest.raises(InputError, match="tuning_pairs: the demo set is generated"):
        tuning_splits("demo", 30, "unsampled")


def test_bench_tune_compares_the_three_ways_on_the_same_split(three_layers):
    from hf_smoe.bench import bench_tune

    results = bench_tune(three_layers, num_pairs=40, layers=1)
    assert (results["layers"], results["of_layers"]) == (1, 3) and results["train_pairs"] > 0
    assert results["cached_validation_accuracy"] == results["recomputed_validation_accuracy"]
    assert results["speedup_vs_recomputed"] == pytest.approx(
        results["recomputed_seconds_per_epoch"] / results["cached_seconds_per_epoch"])
    assert results["mixture_speedup_vs_unshared"] == pytest.approx(
        results["mixture_unshared_seconds_per_epoch"] / results["mixture_cached_seconds_per_epoch"])
    # every pair shares at least its prompt, so running it once runs fewer tokens
    assert results["mixture_cached_top_layer_tokens"] < results["mixture_unshared_top_layer_tokens"]
    assert results["mixture_speedup_vs_recomputed"] == pytest.approx(
        results["mixture_recomputed_seconds_per_epoch"] / results["mixture_cached_seconds_per_epoch"])
    assert results["mixture_cost_vs_frozen_head"] == pytest.approx(
        results["mixture_cached_seconds_per_epoch"] / results["mixture_frozen_head_seconds_per_epoch"])
    assert all(results[f"mixture_{way}_peak_anonymous_mb"] > 0
               for way in ("cached", "unshared", "recomputed", "frozen_head"))


def test_smoe_tune_backbone_cli_and_its_errors(three_layers, tmp_path):
    generate_preference_set(30, seed=3).to_json(tmp_path / "pairs.jsonl")
    common = ("--dataset", tmp_path / "pairs.jsonl", "--backbone", three_layers, "--cache_dir", tmp_path / "cache",
              "--max_length", "64", "--num_train_epochs", "1", "--logging_strategy", "no")
    bad = run_cli("tune-backbone", *common, "--layers", "9", "--output_dir", tmp_path / "bad")
    assert bad.code == 2 and "layers: must be an integer from 1 to 3" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("tune-backbone", *common, "--pooling", "max", "--output_dir", tmp_path / "bad")
    assert bad.code == 2 and "pooling: unknown 'max'" in bad.stderr
    bad = run_cli("tune-backbone", *common, "--head_init", "zeros", "--output_dir", tmp_path / "bad")
    assert bad.code == 2 and "head_init: unknown 'zeros'; choose one of ('probe', 'random')" in bad.stderr
    bad = run_cli("tune-backbone", *common, "--lora_rank", "-1", "--output_dir", tmp_path / "bad")
    assert bad.code == 2 and "lora_rank: must be 0 (full layers) or a positive rank, got -1" in bad.stderr
    good = run_cli("tune-backbone", *common, "--layers", "2", "--head_init", "probe", "--output_dir",
                   tmp_path / "tuned")
    assert good.code == 0, good.stderr
    assert "--backbone " + str(tmp_path / "tuned") in good.stdout
    again = run_cli("tune-backbone", *common, "--layers", "2", "--output_dir", tmp_path / "tuned")
    assert again.code == 2 and "pass --overwrite" in again.stderr
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())["results"]
    assert results["layers_tuned"] == 2
    # the probe head's accuracy before tuning: a share of the validation pairs
    assert (results["probe_validation_accuracy"] * results["validation_pairs"]) % 1 == pytest.approx(0, abs=1e-6)
