"""The embedding cache: equals the model's own forward, computes each text once, resumes after interruption."""

import pytest
import torch
from datasets import Dataset

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.features import EmbeddingCache, text_key

ITEMS = [("hello how are you today", "good thanks"), ("what is a cat ?", "a kind dog , yes"),
         ("why ?", "because"), ("please code a poem", "sure here is a long poem of the sun and rain and the code"),
         ("hello", "no"), ("what is the answer ?", "the answer is yes because it is good")]


def make_cache(model, tokenizer, tmp_path, **kwargs):
    return EmbeddingCache(model, tokenizer, cache_dir=tmp_path, show_progress=False, **kwargs)


def test_cached_values_equal_the_models_own_forward(model, kind, tokenizers, tmp_path):
    tokenizer = tokenizers[kind]
    prompts, responses = make_cache(model, tokenizer, tmp_path, batch_tokens=40).lookup(ITEMS)
    for row, (prompt, response) in enumerate(ITEMS):
        with torch.no_grad():
            out = model(**tokenizer.pad([encode_pair(tokenizer, prompt, response)], return_tensors="pt"))
        torch.testing.assert_close(prompts[row], out.prompt_embeddings[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(responses[row], out.response_embeddings[0], atol=1e-5, rtol=0)


def count_forwarded(cache, monkeypatch, fail_after=None):
    """Counts texts sent through the backbone; optionally raises after `fail_after` batches (an interruption)."""
    seen = {"texts": 0, "batches": 0}
    original = cache._forward

    def forward(batch):
        if fail_after is not None and seen["batches"] == fail_after:
            raise KeyboardInterrupt
        seen["texts"] += len(batch)
        seen["batches"] += 1
        return original(batch)

    monkeypatch.setattr(cache, "_forward", forward)
    return seen


def test_each_unique_text_is_embedded_once(backbone_dirs, tokenizers, tmp_path, monkeypatch):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    cache = make_cache(model, tokenizers["llama"], tmp_path)
    seen = count_forwarded(cache, monkeypatch)
    cache.embed(ITEMS + ITEMS[:3])  # duplicates inside one call
    cache.embed(ITEMS)  # and across calls
    assert seen["texts"] == len(ITEMS)
    again = make_cache(model, tokenizers["llama"], tmp_path)  # a new process finds the stored shards
    assert count_forwarded(again, monkeypatch) and again.lookup(ITEMS)[0].shape == (len(ITEMS), 32)


def test_interrupted_run_resumes_where_it_stopped(backbone_dirs, tokenizers, tmp_path, monkeypatch):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    reference = make_cache(model, tokenizer, tmp_path / "reference").lookup(ITEMS)

    first = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=1)  # one text per batch
    count_forwarded(first, monkeypatch, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        first.embed(ITEMS)
    (first.directory / "shard-00009.partial").mkdir()  # a shard being written when the process died
    second = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=1)
    seen = count_forwarded(second, monkeypatch)
    resumed = second.lookup(ITEMS)
    assert seen["texts"] == len(ITEMS) - 4
    for got, want in zip(resumed, reference):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_fingerprint_tracks_everything_that_changes_the_numbers(backbone_dirs, tokenizers, tmp_path):
    tokenizer = tokenizers["llama"]
    torch.manual_seed(0)
    base = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    same = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=5, preset="micro")  # head only differs
    mean = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2, pooling="mean")
    fingerprint = make_cache(base, tokenizer, tmp_path).fingerprint()
    assert make_cache(same, tokenizer, tmp_path).fingerprint() == fingerprint
    assert make_cache(base, tokenizer, tmp_path, max_length=64).fingerprint() != fingerprint
    assert make_cache(mean, tokenizer, tmp_path).fingerprint() != fingerprint
    with torch.no_grad():
        base.backbone.norm.weight.mul_(1.01)
    assert make_cache(base, tokenizer, tmp_path).fingerprint() != fingerprint


def test_length_buckets_are_sorted_and_within_budget(backbone_dirs, tokenizers, tmp_path, monkeypatch):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    cache = make_cache(model, tokenizers["llama"], tmp_path, batch_tokens=48)
    batches = []
    original = cache._forward
    monkeypatch.setattr(cache, "_forward", lambda batch: batches.append(batch) or original(batch))
    cache.embed(ITEMS)
    lengths = [[len(e["input_ids"]) for _, e in batch] for batch in batches]
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat, reverse=True) and len(batches) > 1
    assert all(len(batch) * max(batch) <= 48 or len(batch) == 1 for batch in lengths)


def test_pair_features(backbone_dirs, tokenizers, tmp_path):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    cache = make_cache(model, tokenizers["llama"], tmp_path)
    pairs = Dataset.from_dict({"prompt": [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "why ?"}]],
                               "chosen": ["good thanks", "because"], "rejected": ["no", "yes"],
                               "category": ["a", "b"]})
    features = cache.pair_features(pairs).with_format("torch")
    assert features.column_names == ["prompt_embedding", "chosen_embedding", "rejected_embedding", "category"]
    prompt, chosen = cache.lookup([("hello", "good thanks"), ("why ?", "because")])
    _, rejected = cache.lookup([("hello", "no"), ("why ?", "yes")])
    torch.testing.assert_close(features[:]["prompt_embedding"], prompt, atol=0, rtol=0)
    torch.testing.assert_close(features[:]["chosen_embedding"], chosen, atol=0, rtol=0)
    torch.testing.assert_close(features[:]["rejected_embedding"], rejected, atol=0, rtol=0)
    assert text_key("hello", "no") == text_key([{"role": "user", "content": "hello"}], "no")
