"""`smoe train` under `torchrun --nproc_per_node 2` on CPU (gloo): the head trains through DDP with synchronized
gradients and the objective's batch-level terms on the global batch, the embedding cache is filled cooperatively,
and one checkpoint is written."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import concatenate_datasets, load_from_disk
from safetensors.torch import load_file

from hf_smoe.cli.main import main
from hf_smoe.features import text_key
from hf_smoe.data.synthetic import generate_preference_set

DUMP_EACH_RANK = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    import hf_smoe.training.job as training_job

    trained = training_job.run_trainer

    def run_and_dump(model, features, args, resume_from_checkpoint=None):
        trainer = trained(model, features, args, resume_from_checkpoint)
        state = {name: tensor.detach().contiguous() for name, tensor in model.head.state_dict().items()}
        save_file(state, os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ['RANK']}.safetensors"))
        return trainer

    training_job.run_trainer = run_and_dump
    from hf_smoe.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")

EMBED_WITH_A_LATE_RANK = textwrap.dedent("""
    import json, os, sys, time
    from hf_smoe.features import EmbeddingCache, PairTexts
    from hf_smoe.runtime import load_backbone_model, state
    from hf_smoe.data import load_pairs

    backbone, pairs_file, cache_dir = sys.argv[1:]
    model, tokenizer = load_backbone_model(backbone, "sparse", 3, 0)
    cache = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=64, batch_tokens=64, shard_size=1,
                           show_progress=False)
    process = state()
    if process.process_index == 1:
        time.sleep(3)  # the main process has written its shards by now, and waits
    keys = cache.embed(PairTexts(load_pairs(pairs_file)))
    report = {"rank": process.process_index, "missing": int((cache.store.rows(keys) < 0).sum())}
    # one write of one short line: the two ranks share a pipe, and print's separate newline write can interleave
    os.write(sys.stdout.fileno(), (json.dumps(report) + "\\n").encode())
""")


@pytest.mark.slow
def test_a_late_process_embeds_the_share_the_main_process_planned(backbone_dirs, tmp_path):
    """A process that starts embedding after another has written shards still embeds its share of the same plan,
    so no text is left out."""
    pairs = generate_preference_set(12, seed=3)
    pairs.to_json(tmp_path / "pairs.jsonl")
    script = tmp_path / "embed.py"
    script.write_text(EMBED_WITH_A_LATE_RANK)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                               backbone_dirs["llama"], tmp_path / "pairs.jsonl", tmp_path / "cache"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    reports = sorted((json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")),
                     key=lambda report: report["rank"])
    assert reports == [{"missing": 0, "rank": 0}, {"missing": 0, "rank": 1}]
    shards = [path for path in (tmp_path / "cache").glob("*/shard-*") if path.is_dir()]
    keys = concatenate_datasets([load_from_disk(str(shard)) for shard in shards])["key"]
    assert len(keys) == len(set(keys))  # no text embedded twice
    assert set(keys) == {text_key(pair["prompt"], pair[side]) for pair in pairs for side in ("chosen", "rejected")}
    assert {int(shard.name.removeprefix("shard-")) % 2 for shard in shards} == {0, 1}  # both embedded a share


@pytest.mark.slow
def test_two_processes_train_the_objective_of_one_with_the_global_batch(backbone_dirs, tmp_path):
    generate_preference_set(40, seed=2).to_json(tmp_path / "pairs.jsonl")

    def args(output, cache, batch):
        return [str(a) for a in ("train", "--dataset", tmp_path / "pairs.jsonl", "--backbone", backbone_dirs["llama"],
                                 "--max_length", 64, "--num_experts", 3, "--max_steps", 12, "--cache_dir", cache,
                                 "--output_dir", output, "--per_device_train_batch_size", batch,
                                 "--router_jitter_noise", 0, "--router_dropout", 0, "--disable_tqdm", "true")]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUMP_DIR": str(tmp_path)}
    script = tmp_path / "dump_each_rank.py"
    script.write_text(DUMP_EACH_RANK)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                               *args(tmp_path / "two", tmp_path / "cache2", 8)],
                              capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]

    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    for name in ranks[0]:  # DDP: identical gradients, identical steps
        assert torch.equal(ranks[0][name], ranks[1][name]), name

    assert main(args(tmp_path / "one", tmp_path / "cache1", 16)) == 0  # one process, the same global batch
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name in (name for name in one if name.startswith("head.")):
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0)
        assert torch.equal(two[name], ranks[0][name.removeprefix("head.")]), name

    shards = sorted(path for path in (tmp_path / "cache2").glob("*/shard-*") if path.is_dir())
    keys = concatenate_datasets([load_from_disk(str(shard)) for shard in shards])["key"]
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    expected = {text_key(pair["prompt"], pair[side]) for pair in pairs for side in ("chosen", "rejected")}
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected  # every text exactly once
    assert len(shards) >= 2  # both processes embedded a share
    written = [path.name for path in tmp_path.iterdir() if path.name.startswith((".two", "two"))]
    assert written == ["two"]  # one checkpoint, no staging left

