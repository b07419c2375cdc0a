"""The `smoe` command line and the interim demo."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hf_smoe import encode_pair
from hf_smoe.cli import main
from hf_smoe.demo import CATEGORIES, generate_pairs


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "hf_smoe.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "usage: smoe" in result.stdout


def test_generated_pairs_are_seeded_and_category_dependent():
    pairs = generate_pairs(40, label_noise=0.0, seed=3)
    assert pairs == generate_pairs(40, label_noise=0.0, seed=3) != generate_pairs(40, label_noise=0.0, seed=4)
    for pair in pairs:
        _, wanted, unwanted = CATEGORIES[pair["category"]]
        assert wanted in pair["chosen"].split() and unwanted in pair["rejected"].split()
    noisy = generate_pairs(400, label_noise=0.25, seed=3)
    flipped = sum(CATEGORIES[p["category"]][1] not in p["chosen"].split() for p in noisy) / len(noisy)
    assert 0.18 < flipped < 0.32


@pytest.mark.slow
def test_demo_writes_a_checkpoint_that_reloads(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--num-pairs", "160", "--epochs", "3"]) == 0
    table = capsys.readouterr().out
    assert all(preset in table for preset in ("single", "vanilla", "micro", "sparse"))
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert set(results["results"]) == {"single", "vanilla", "micro", "sparse"}
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.preset == "sparse" and model.config.num_experts == 4
    batch = tokenizer.pad([encode_pair(tokenizer, "cat dog kind good good ?", "sure a kind answer .")],
                          return_tensors="pt")
    out = model(**batch)
    torch.testing.assert_close(out.logits[:, 0], (out.routing_weights * out.expert_rewards).sum(-1))


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--num-pairs", "many"])
    assert exit_info.value.code == 2
