"""The embedding cache: equals the model's own forward, computes each text once, resumes after interruption."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pyarrow
import pytest
import torch
from datasets import Dataset, load_from_disk

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.features import FEATURE_COLUMNS, EmbeddingCache, FeatureStore, text_key
from hf_smoe.errors import InputError

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
    """An earlier digest: a strided sample of every tensor (kept here to show what it missed)."""
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
    assert len(set(MANY)) == len(MANY) == 18
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    tokenizer = tokenizers["llama"]
    reference = make_cache(model, tokenizer, tmp_path / "reference", **KILL)
    plan = record_batches(reference)
    want = reference.lookup(MANY)
    assert len(plan) > 4 and len({len(batch) for batch in plan}) > 1

    # the same number of threads as this process: a CPU's kernels may split a reduction differently on 1 and 2 threads
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
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

    done = len(resumed.store)
    assert 0 < done < len(MANY)
    batches = record_batches(resumed)
    got = resumed.lookup(MANY[::-1])  # another order of the same texts: the plan does not depend on it
    order = [MANY[::-1].index(item) for item in MANY]
    assert batches == plan[len(plan) - len(batches):]  # the uninterrupted run's remaining batches, exactly
    assert sum(len(batch) for batch in batches) == len(MANY) - done
    assert torch.equal(got[0][order], want[0]) and torch.equal(got[1][order], want[1])
    assert not any(path.name.endswith(".partial") for path in resumed.directory.iterdir())


def test_a_deleted_shard_is_recomputed_under_a_new_name(backbone_dirs, tokenizers, tmp_path):
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
    from hf_smoe.runtime import devices
    from hf_smoe.errors import InputError

    cpu = torch.device("cpu")
    monkeypatch.delenv("HF_SMOE_DTYPE", raising=False)
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda native=native: native)
        assert devices.fast_dtype(cpu) == expected
    monkeypatch.setenv("HF_SMOE_DTYPE", "float32")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.fast_dtype(cpu) == torch.float32
    monkeypatch.setenv("HF_SMOE_DTYPE", "fp16")
    with pytest.raises(InputError, match="HF_SMOE_DTYPE: 'fp16' is not a compute dtype"):
        devices.fast_dtype(cpu)
    flags = open("/proc/cpuinfo").read().split()
    monkeypatch.undo()
    assert devices.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bf16_features_are_stored_exactly_in_float16(model, kind, tokenizers, tmp_path):
    """16-bit computations are stored as float16, which holds every bf16 value in its range exactly: what is read
    back equals the bf16 backbone's own output, converted to float32."""
    tokenizer = tokenizers[kind]
    cache = EmbeddingCache(model, tokenizer, cache_dir=tmp_path, dtype=torch.bfloat16, show_progress=False,
                           batch_tokens=1)  # one text a batch, as below: bf16 sums depend on the batch's shape
    prompts, responses = cache.lookup(ITEMS)
    assert cache.store.shards() and all(str(load_from_disk(str(shard)).features["response_embedding"].feature.dtype)
                                        == "float16" for shard in cache.store.shards())
    for row, item in enumerate(ITEMS):
        with torch.inference_mode():
            batch = tokenizer.pad([encode_pair(tokenizer, *item)], return_tensors="pt")
            prompt, response = cache._computing_model().embed(**batch)
        assert torch.equal(prompts[row], prompt[0].float()) and torch.equal(responses[row], response[0].float())


def test_values_beyond_float16_are_refused_not_stored(tmp_path):
    store = FeatureStore(tmp_path, hidden_size=2, dtype=np.float16)
    with pytest.raises(InputError, match="beyond float16's range .* HF_SMOE_DTYPE=float32"):
        store.write_shard(np.array(["a" * 64], dtype="S64"), prompt_embedding=np.array([[1.0, 7e4]]),
                          response_embedding=np.zeros((1, 2)))
    assert store.shards() == []


def synthetic_store(folder, rows, hidden, shard_size=1000, seed=0):
    """A store of `rows` random float32 vectors in shards, and its keys (the sha256 of each row number)."""
    generator = np.random.default_rng(seed)
    keys = np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)], dtype="S64")
    prompts = generator.standard_normal((rows, hidden), dtype=np.float32)
    responses = generator.standard_normal((rows, hidden), dtype=np.float32)
    store = FeatureStore(folder, hidden, np.float32)
    for start in range(0, rows, shard_size):
        store.write_shard(keys[start:start + shard_size], prompt_embedding=prompts[start:start + shard_size],
                          response_embedding=responses[start:start + shard_size])
    return keys, prompts, responses


def test_the_index_reads_keys_only_and_vectors_on_demand(tmp_path):
    """Opening the store maps the shards and reads their keys: the memory it takes is a small fraction of the
    vectors' size (here 33 MB; a shard's checksum is read 1 MB at a time); rows and vectors read back are the
    written ones, in any order, across shards."""
    keys, prompts, responses = synthetic_store(tmp_path, rows=4000, hidden=1024)
    store = FeatureStore(tmp_path, prompts.shape[1], np.float32)
    arrow_before = pyarrow.total_allocated_bytes()
    tracemalloc.start()
    assert len(store) == len(keys)
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrow_taken = pyarrow.total_allocated_bytes() - arrow_before
    vector_bytes = prompts.nbytes + responses.nbytes
    assert python_peak + arrow_taken < vector_bytes / 10, (python_peak, arrow_taken, vector_bytes)

    wanted = np.array([2999, 5, 1000, 999, 5, 2001])
    unknown = np.array(["f" * 64], dtype="S64")
    rows = store.rows(np.concatenate([keys[wanted], unknown]))
    assert rows[-1] == -1 and (rows[:-1] >= 0).all()
    got = store.read(rows[:-1])
    assert np.array_equal(got["prompt_embedding"], prompts[wanted])
    assert np.array_equal(got["response_embedding"], responses[wanted])


def test_streamed_pair_features_equal_the_in_memory_computation(model, kind, tokenizers, tmp_path):
    """The memory-mapped pair file, read in batches of 2 by `head_outputs`, gives exactly what the head computes on
    the whole set held in memory (vectors looked up text by text); shuffled pairs (an indices mapping) too."""
    from hf_smoe.evaluation.evaluate import head_outputs
    from hf_smoe.features import as_training_features

    pairs = Dataset.from_dict({"prompt": [p for p, _ in ITEMS], "chosen": [r for _, r in ITEMS],
                               "rejected": [r for _, r in ITEMS[::-1]], "category": list("abcabc")})
    pairs = pairs.shuffle(seed=3).select(range(5))
    cache = make_cache(model, tokenizers[kind], tmp_path)
    features = cache.pair_features(pairs)
    assert features.cache_files and features["category"] == pairs["category"]
    streamed = head_outputs(model.head, as_training_features(features), batch_size=2)
    prompt, chosen = cache.lookup(list(zip(pairs["prompt"], pairs["chosen"])))
    _, rejected = cache.lookup(list(zip(pairs["prompt"], pairs["rejected"])))
    with torch.no_grad():
        model.head.eval()
        expected = {"routing_weights": model.head.router(prompt), "chosen_expert_rewards": model.head.experts(chosen),
                    "rejected_expert_rewards": model.head.experts(rejected)}
    for name, value in expected.items():
        torch.testing.assert_close(streamed[name], value, atol=1e-6, rtol=1e-6)


def test_a_pair_file_is_written_once_and_a_damaged_one_rewritten(backbone_dirs, tokenizers, tmp_path):
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    pairs = Dataset.from_dict({"prompt": ["hello", "why ?"], "chosen": ["good thanks", "because"],
                               "rejected": ["no", "yes"]})
    cache = make_cache(model, tokenizers["llama"], tmp_path)
    first = cache.pair_features(pairs)
    path = first.cache_files[0]["filename"]
    want = first.with_format("numpy")[:]
    modified = os.stat(path).st_mtime_ns
    assert make_cache(model, tokenizers["llama"], tmp_path).pair_features(pairs).cache_files[0]["filename"] == path
    assert os.stat(path).st_mtime_ns == modified  # reused, not rewritten
    data = bytearray(open(path, "rb").read())
    data[-200] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.warns(UserWarning, match="damaged pair file"):
        again = make_cache(model, tokenizers["llama"], tmp_path).pair_features(pairs).with_format("numpy")[:]
    for name in FEATURE_COLUMNS:
        assert np.array_equal(again[name], want[name]), name


def test_stale_partial_pair_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "pairs" / f"0123.{int(dead.stdout)}.partial"
    stale.mkdir(parents=True)
    synthetic_store(tmp_path, rows=10, hidden=4)
    assert len(FeatureStore(tmp_path, 4, np.float32)) == 10 and not stale.exists()


@pytest.mark.slow
def test_bench_scale_streamed_and_in_memory_train_the_same_head(tmp_path):
    """`smoe bench scale` at a small size: the streamed store and the all-in-RAM baseline reach the same test
    accuracy (they read the same float16 values in the same batches), each run measured in its own process."""
    from hf_smoe.bench import bench_scale

    results = bench_scale("unused", num_pairs=(400,), hidden=256, in_memory_max_pairs=400, scratch_dir=tmp_path)
    run = results["400"]
    assert run["streamed"]["test_accuracy"] == run["in_memory"]["test_accuracy"] > 0.5
    assert run["streamed"]["peak_anonymous_gb"] > 0 and run["disk_gb_with_pair_files"] > run["disk_gb"]
    assert list(tmp_path.iterdir()) == []  # the scratch store is deleted
