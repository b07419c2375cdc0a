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


def strided_digest(module):
    """The digest before issue 12's fix: a strided sample of every tensor (kept here to show what it missed)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().flatten()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(flat[:: max(1, flat.numel() // 1024)].float().numpy().tobytes())
    return digest.hexdigest()


def test_one_changed_weight_the_old_stride_skipped_changes_the_fingerprint(backbone_dirs, tokenizers, tmp_path,
                                                                            monkeypatch):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    before = make_cache(model, tokenizer, tmp_path)
    old_features, old_stride = before.lookup(ITEMS), strided_digest(model.backbone)
    weight = model.backbone.state_dict()["layers.1.mlp.down_proj.weight"]
    assert weight.numel() // 1024 == 2  # the old digest read elements 0, 2, 4, ... of it
    with torch.no_grad():
        weight.view(-1)[1] += 1.0
    assert strided_digest(model.backbone) == old_stride  # what the old digest could not see
    after = make_cache(model, tokenizer, tmp_path)
    assert after.directory != before.directory
    seen = count_forwarded(after, monkeypatch)
    prompts, responses = after.lookup(ITEMS)
    assert seen["texts"] == len(ITEMS)  # nothing reused from the stale folder
    assert not torch.equal(responses, old_features[1])
    for row, (prompt, response) in enumerate(ITEMS):
        with torch.no_grad():
            out = model(**tokenizer.pad([encode_pair(tokenizer, prompt, response)], return_tensors="pt"))
        torch.testing.assert_close(responses[row], out.response_embeddings[0], atol=1e-5, rtol=0)


VOCAB = "hello how are you today what is the a an of to and in it this that good bad answer question please".split()
MANY = [(" ".join(VOCAB[i % 7:i % 7 + 1 + i % 5]), " ".join(VOCAB[3 * i % 11:3 * i % 11 + 1 + 7 * i % 6]))
        for i in range(18)]  # 18 texts, several of equal length
KILL = dict(batch_tokens=40, shard_size=3)
KILL_SCRIPT = r"""
import json, os, pathlib, signal, sys
from hf_smoe import SMoERewardModel
from hf_smoe.features import EmbeddingCache
from hf_smoe.testing import word_tokenizer

backbone, cache_dir, mode, kill_at, settings = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
items = [tuple(item) for item in json.loads(sys.argv[6])]
renames = 0
rename = pathlib.Path.rename


def dying_rename(self, target):
    global renames
    if self.name.endswith(".partial"):
        renames += 1
        if renames == kill_at and mode == "before-rename":  # saved with its manifest, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    result = rename(self, target)
    if renames == kill_at and mode == "after-shard":
        os.kill(os.getpid(), signal.SIGKILL)
    return result


pathlib.Path.rename = dying_rename
model = SMoERewardModel.from_backbone(backbone, num_experts=2)
EmbeddingCache(model, word_tokenizer("chatml"), cache_dir=cache_dir, show_progress=False,
               **json.loads(settings)).embed(items)
sys.exit(3)  # not killed: the test's premise failed
"""


def record_batches(cache):
    batches, original = [], cache._forward
    cache._forward = lambda batch: batches.append([key for key, _ in batch]) or original(batch)
    return batches


@pytest.mark.parametrize("mode", ["after-shard", "before-rename"])
def test_sigkill_and_resume_is_bit_identical(mode, backbone_dirs, tokenizers, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    assert len(set(MANY)) == len(MANY) == 18
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    reference = make_cache(model, tokenizer, tmp_path / "reference", **KILL)
    plan = record_batches(reference)
    want = reference.lookup(MANY)
    assert len(plan) > 4 and len({len(batch) for batch in plan}) > 1

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    died = subprocess.run([sys.executable, "-c", KILL_SCRIPT, backbone_dirs["llama"], str(tmp_path / "run"), mode,
                           "2", json.dumps(KILL), json.dumps(MANY)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    resumed = make_cache(model, tokenizer, tmp_path / "run", **KILL)
    names = sorted(path.name for path in resumed.directory.iterdir())
    partials = [name for name in names if name.endswith(".partial")]
    assert [n for n in names if not n.endswith(".partial")] == (
        ["shard-00000", "shard-00001"] if mode == "after-shard" else ["shard-00000"])
    assert len(partials) == (mode == "before-rename")

    done = len(resumed._load()[0])
    assert 0 < done < len(MANY)
    batches = record_batches(resumed)
    got = resumed.lookup(MANY[::-1])  # another order of the same texts: the plan does not depend on it
    order = [MANY[::-1].index(item) for item in MANY]
    assert batches == plan[len(plan) - len(batches):]  # the uninterrupted run's remaining batches, exactly
    assert sum(len(batch) for batch in batches) == len(MANY) - done
    assert torch.equal(got[0][order], want[0]) and torch.equal(got[1][order], want[1])
    assert not any(path.name.endswith(".partial") for path in resumed.directory.iterdir())


def test_a_deleted_shard_is_recomputed_under_a_new_name(backbone_dirs, tokenizers, tmp_path):
    import shutil

    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    want = make_cache(model, tokenizer, tmp_path / "reference", batch_tokens=1, shard_size=2).lookup(ITEMS)
    cache = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=2)
    cache.lookup(ITEMS)
    shutil.rmtree(cache.directory / "shard-00000")
    for _ in range(2):  # every rerun works (the next name used to be `shard-{count}`, which still existed)
        got = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=2).lookup(ITEMS)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert sorted(path.name for path in cache.directory.iterdir()) == ["shard-00001", "shard-00002", "shard-00003"]


def test_a_damaged_shard_is_reported_once_deleted_and_reembedded(backbone_dirs, tokenizers, tmp_path, monkeypatch):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    want = make_cache(model, tokenizer, tmp_path / "reference", batch_tokens=1, shard_size=2).lookup(ITEMS)
    make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=2).lookup(ITEMS)
    cache = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=2)
    arrow = next((cache.directory / "shard-00001").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[-200:-100] = bytes(100)  # same size, different bytes
    arrow.write_bytes(bytes(data))
    seen = count_forwarded(cache, monkeypatch)
    with pytest.warns(UserWarning, match=r"shard-00001 \(data-.*\.arrow does not match its checksum\).*re-embedded"):
        got = cache.lookup(ITEMS)
    assert seen["texts"] == 2
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = make_cache(model, tokenizer, tmp_path / "run", batch_tokens=1, shard_size=2).lookup(ITEMS)
    assert torch.equal(again[1], want[1])


def test_bf16_features_come_from_a_bf16_copy_and_match_fp32_to_bf16_precision(model, kind, tokenizers, tmp_path):
    """The hardware's bf16 path: features computed with bf16 *weights* (a converted copy; the caller's fp32 model,
    which a checkpoint saves, is bit-identical afterwards), close to the fp32 features, under another fingerprint."""
    tokenizer = tokenizers[kind]
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fp32 = EmbeddingCache(model, tokenizer, cache_dir=tmp_path, dtype=torch.float32, show_progress=False)
    bf16 = EmbeddingCache(model, tokenizer, cache_dir=tmp_path, dtype=torch.bfloat16, show_progress=False)
    assert fp32.directory != bf16.directory
    reference, computed = fp32.lookup(ITEMS), bf16.lookup(ITEMS)
    assert next(bf16._computing_model().backbone.parameters()).dtype == torch.bfloat16
    assert fp32._computing_model() is model
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == weights[name].dtype and torch.equal(tensor, weights[name]), name
    for exact, approximate in zip(reference, computed):
        assert approximate.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(exact, approximate, dim=-1)
        assert (cosine > 0.99).all(), cosine
        assert not torch.equal(exact, approximate)  # it did compute in bf16


def test_the_compute_dtype_follows_the_hardware_unless_overridden(monkeypatch):
    from hf_smoe import loading
    from hf_smoe.modeling.configuration_smoe import InputError

    cpu = torch.device("cpu")
    monkeypatch.delenv("HF_SMOE_DTYPE", raising=False)
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda native=native: native)
        assert loading.fast_dtype(cpu) == expected
    monkeypatch.setenv("HF_SMOE_DTYPE", "float32")
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.fast_dtype(cpu) == torch.float32
    monkeypatch.setenv("HF_SMOE_DTYPE", "fp16")
    with pytest.raises(InputError, match="HF_SMOE_DTYPE: 'fp16' is not a compute dtype"):
        loading.fast_dtype(cpu)
    flags = open("/proc/cpuinfo").read().split()
    monkeypatch.undo()
    assert loading.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
