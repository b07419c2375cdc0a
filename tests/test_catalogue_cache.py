"""Failure catalogue: the embedding cache's damaged, deleted and half-written shards, a weight change the
old strided digest missed, and `encode_pair`'s truncation limits. Every `check` compares with values computed
independently: a fresh cache in another folder, the model's own forward, or ids assembled by hand."""

import json
import shutil

import torch

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.features import EmbeddingCache
from hf_smoe.features.store import MANIFEST
from hf_smoe.modeling.modeling_smoe import assistant_turn_pattern
from hf_smoe.testing import save_tiny_backbone, word_tokenizer

from catalogue import Case, check_case, parametrize

ITEMS = [("hello how are you today", "good thanks"), ("what is a cat ?", "a kind dog , yes"),
         ("why ?", "because"), ("please code a poem", "sure here is a long poem of the sun and rain and the code"),
         ("hello", "no"), ("what is the answer ?", "the answer is yes because it is good")]
SETTINGS = dict(batch_tokens=1, shard_size=2, show_progress=False)  # one text per batch, three shards of two
LONG_PROMPT = " ".join(["why is the sun good and the rain bad ?"] * 30)  # about 300 tokens


def tiny(tmp_path):
    folder = tmp_path / "backbone"
    if not folder.exists():
        save_tiny_backbone(folder, "llama")
    return SMoERewardModel.from_backbone(str(folder), num_experts=2), word_tokenizer("chatml")


def counted(cache):
    """The cache, with a count of the texts it sends through the backbone."""
    cache.forwarded, original = 0, cache._forward

    def forward(batch):
        cache.forwarded += len(batch)
        return original(batch)

    cache._forward = forward
    return cache


def rerun_after(damage):
    """Fills a cache (three shards), applies `damage(shard folder, cache folder)`, then looks the texts up again in a
    new cache over the same folder; returns what the check needs, with a fresh cache's values to compare."""

    def run(tmp_path):
        model, tokenizer = tiny(tmp_path)
        fresh = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "fresh", **SETTINGS).lookup(ITEMS)
        first = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "run", **SETTINGS)
        first.lookup(ITEMS)
        damage(first.directory / "shard-00001", first.directory)
        again = counted(EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "run", **SETTINGS))
        got = again.lookup(ITEMS)
        third = counted(EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "run", **SETTINGS))
        third.lookup(ITEMS)  # a further rerun finds everything
        return {"got": got, "fresh": fresh, "forwarded": again.forwarded, "third": third.forwarded,
                "names": sorted(path.name for path in again.directory.iterdir())}

    return run


def reembedded(count, names=("shard-00000", "shard-00002", "shard-00003")):
    def check(result):
        assert torch.equal(result["got"][0], result["fresh"][0])
        assert torch.equal(result["got"][1], result["fresh"][1])
        assert result["forwarded"] == count and result["third"] == 0
        assert result["names"] == list(names), result["names"]  # no `.partial` left, no name reused
    return check


def arrow_file(shard):
    return next(shard.glob("*.arrow"))


def rewrite_bytes(shard, _):
    path = arrow_file(shard)
    data = bytearray(path.read_bytes())
    data[-300:-200] = bytes(reversed(data[-300:-200]))  # same size, values scrambled
    path.write_bytes(bytes(data))


def truncate(shard, _):
    path = arrow_file(shard)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def swap_with_another_shard(shard, folder):
    shutil.copyfile(arrow_file(folder / "shard-00000"), arrow_file(shard))  # valid Arrow, wrong texts


def drop_manifest(shard, _):
    (shard / MANIFEST).unlink()  # as a shard written before checksums were kept


def garble_manifest(shard, _):
    (shard / MANIFEST).write_text("{not json")


def drop_data_file(shard, _):
    arrow_file(shard).unlink()


def drop_state_file(shard, _):
    (shard / "state.json").unlink()


def delete_shard(shard, _):
    shutil.rmtree(shard)


def delete_two_shards(shard, folder):
    shutil.rmtree(shard)
    shutil.rmtree(folder / "shard-00000")


def leave_partials(_, folder):
    """What killed writes leave: an old-style `.partial` and one of a process that no longer runs, both holding
    garbage; neither may be read, and a later write must not collide with them."""
    for name in ("shard-00003.partial", "shard-00003.999999999.partial"):
        (folder / name).mkdir()
        (folder / name / "data-00000-of-00001.arrow").write_bytes(b"garbage")


def changed_weight(tmp_path):
    """One element the old strided digest never read (index 1 of a 2048-element tensor, stride 2)."""
    model, tokenizer = tiny(tmp_path)
    before = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "cache", **SETTINGS)
    before.lookup(ITEMS)
    with torch.no_grad():
        model.backbone.state_dict()["layers.1.mlp.down_proj.weight"].view(-1)[1] += 1.0
    after = counted(EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "cache", **SETTINGS))
    got = after.lookup(ITEMS)
    with torch.no_grad():
        direct = [model(**tokenizer.pad([encode_pair(tokenizer, p, r)], return_tensors="pt")) for p, r in ITEMS]
    return {"got": got, "direct": direct, "forwarded": after.forwarded, "folders": (before.directory, after.directory)}


def check_changed_weight(result):
    assert result["folders"][0] != result["folders"][1] and result["forwarded"] == len(ITEMS)
    for row, out in enumerate(result["direct"]):
        torch.testing.assert_close(result["got"][0][row], out.prompt_embeddings[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(result["got"][1][row], out.response_embeddings[0], atol=1e-5, rtol=0)


def interrupted_then_reordered(tmp_path):
    """A run stopped after two shards, resumed with the texts in another order: bit-identical to a fresh run."""
    model, tokenizer = tiny(tmp_path)
    settings = dict(SETTINGS, batch_tokens=24)
    fresh = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "fresh", **settings).lookup(ITEMS)
    first = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "run", **settings)
    written, write = [], first._write

    def stop_after_two(rows):
        write(rows)
        written.append(len(rows))
        if len(written) == 2:
            raise KeyboardInterrupt

    first._write = stop_after_two
    try:
        first.embed(ITEMS)
    except KeyboardInterrupt:
        pass
    again = counted(EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "run", **settings))
    got = again.lookup(ITEMS[::-1])
    return {"got": tuple(t.flip(0) for t in got), "fresh": fresh, "forwarded": again.forwarded,
            "done": sum(written)}


def check_interrupted(result):
    assert torch.equal(result["got"][0], result["fresh"][0]) and torch.equal(result["got"][1], result["fresh"][1])
    assert 0 < result["done"] < len(ITEMS) and result["forwarded"] == len(ITEMS) - result["done"]


def encoded(prompt, response, max_length, style="chatml"):
    def run(_):
        tokenizer = word_tokenizer(style)
        return tokenizer, prompt, response, max_length, encode_pair(tokenizer, prompt, response, max_length=max_length)
    return run


def check_short_response(result):
    tokenizer, prompt, response, max_length, cut = result
    full = encode_pair(tokenizer, prompt, response)
    prompt_ids, response_ids = full["input_ids"][:full["prompt_lengths"]], full["input_ids"][full["prompt_lengths"]:]
    kept = max_length - 1 - len(response_ids)
    assert len(full["input_ids"]) > max_length == len(cut["input_ids"]) == len(cut["attention_mask"])
    assert cut["input_ids"] == prompt_ids[:1] + prompt_ids[-kept:] + response_ids
    assert cut["prompt_lengths"] == 1 + kept


def check_smallest(result):
    tokenizer, prompt, response, max_length, cut = result
    full = encode_pair(tokenizer, prompt, response)["input_ids"]
    assert cut["input_ids"] == full[:1] + assistant_turn_pattern(tokenizer) + full[-2:]
    assert len(cut["input_ids"]) == max_length


def manifest_lists_every_file(tmp_path):
    model, tokenizer = tiny(tmp_path)
    cache = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "cache", **SETTINGS)
    cache.lookup(ITEMS)
    return cache.directory


def check_manifests(directory):
    import hashlib

    shards = sorted(directory.iterdir())
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    for shard in shards:
        manifest = json.loads((shard / MANIFEST).read_text())
        files = {p.name for p in shard.iterdir()} - {MANIFEST}
        assert set(manifest["files"]) == files and manifest["rows"] == 2
        for name, digest in manifest["files"].items():
            assert hashlib.sha256((shard / name).read_bytes()).hexdigest() == digest


CASES = [
    Case("rewritten-shard-bytes", "warning", "shard-00001 (data-00000-of-00001.arrow does not match its checksum)",
         rerun_after(rewrite_bytes), reembedded(2)),
    Case("truncated-shard-file", "warning", "does not match its checksum); deleted, their texts will be re-embedded",
         rerun_after(truncate), reembedded(2)),
    Case("shard-file-swapped-for-another-valid-one", "warning", "shard-00001 (data-00000-of-00001.arrow does not",
         rerun_after(swap_with_another_shard), reembedded(2)),
    Case("missing-manifest", "warning", "shard-00001 (it has no checksum manifest)", rerun_after(drop_manifest),
         reembedded(2)),
    Case("unreadable-manifest", "warning", "shard-00001 (its checksum manifest is unreadable)",
         rerun_after(garble_manifest), reembedded(2)),
    Case("missing-data-file", "warning", "data-00000-of-00001.arrow is missing or unreadable",
         rerun_after(drop_data_file), reembedded(2)),
    Case("missing-state-file", "warning", "state.json is missing or unreadable", rerun_after(drop_state_file),
         reembedded(2)),
    Case("deleted-shard", "handled", "", rerun_after(delete_shard), reembedded(2)),
    Case("two-deleted-shards", "handled", "", rerun_after(delete_two_shards),
         reembedded(4, names=("shard-00002", "shard-00003", "shard-00004"))),
    Case("stale-partial-folders", "handled", "", rerun_after(leave_partials),
         reembedded(0, names=("shard-00000", "shard-00001", "shard-00002"))),
    Case("every-shard-has-a-manifest", "handled", "", manifest_lists_every_file, check_manifests),
    Case("changed-weight-new-fingerprint", "handled", "", changed_weight, check_changed_weight),
    Case("interrupted-then-resumed-in-another-order", "handled", "", interrupted_then_reordered, check_interrupted),
    Case("short-response-after-long-prompt-256", "handled", "", encoded(LONG_PROMPT, "yes", 256),
         check_short_response),
    Case("short-response-after-long-prompt-plain-fallback", "handled", "",
         encoded(LONG_PROMPT, "good thanks", 64, style="bert"), check_short_response),
    Case("smallest-max-length", "handled", "", encoded(LONG_PROMPT, "good thanks", 6), check_smallest),
    Case("max-length-too-small", "error", "max_length: 5 tokens cannot hold",
         encoded(LONG_PROMPT, "good thanks", 5)),
    Case("max-length-too-small-names-the-fix", "error", "raise max_length to at least 6",
         encoded(LONG_PROMPT, "yes", 3)),
    Case("empty-response", "error", "response: empty text", encoded("hello", "", 256)),
]


@parametrize(CASES)
def test_catalogue_cache(case, tmp_path):
    check_case(case, tmp_path)
