"""`smoe eval`: metrics of a saved checkpoint on cached features equal the model's own forward."""

import math

import pytest
import torch

from hf_smoe import encode_pair
from hf_smoe.cli.main import main
from hf_smoe.data.loading import load_pairs
from hf_smoe.evaluation.evaluate import evaluate_checkpoint


def test_saved_common_schema_loads_back_unchanged(checkpoint_and_data):
    _, _, pairs, tmp_path = checkpoint_and_data
    assert load_pairs(str(tmp_path / "pairs.jsonl")).to_list() == pairs.to_list()


def test_eval_metrics_equal_the_models_own_forward(checkpoint_and_data):
    model, tokenizer, pairs, tmp_path = checkpoint_and_data
    results = evaluate_checkpoint(str(tmp_path / "checkpoint"), str(tmp_path / "pairs.jsonl"),
                                  cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        chosen = model(**tokenizer.pad([encode_pair(tokenizer, p, c) for p, c in zip(pairs["prompt"],
                                                                                     pairs["chosen"])],
                                       return_tensors="pt"))
        rejected = model(**tokenizer.pad([encode_pair(tokenizer, p, r) for p, r in zip(pairs["prompt"],
                                                                                       pairs["rejected"])],
                                         return_tensors="pt"))
    accuracy = (chosen.logits > rejected.logits).float().mean().item()
    pi = chosen.routing_weights.double()
    entropy = (-(pi * pi.log()).sum(-1) / math.log(3)).mean().item()
    assert results["pairs"] == len(pairs)
    assert results["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert results["routing_entropy"] == pytest.approx(entropy, abs=1e-5)
    categories = {"category_coverage", "expert_purity", "expert_specialization", "expert_specialization_top10"}
    assert categories <= set(results) and len(results["expert_categories"]) == 3


def test_eval_without_categories_reports_the_rest(checkpoint_and_data):
    _, _, pairs, tmp_path = checkpoint_and_data
    pairs.remove_columns("category").to_json(tmp_path / "plain.jsonl")
    results = evaluate_checkpoint(str(tmp_path / "checkpoint"), str(tmp_path / "plain.jsonl"),
                                  cache_dir=str(tmp_path / "cache"))
    assert "accuracy" in results and "expert_purity" not in results


def test_eval_cli_refuses_a_checkpoint_that_is_not_ours(checkpoint_and_data, backbone_dirs, capsys):
    _, _, _, tmp_path = checkpoint_and_data
    code = main(["eval", backbone_dirs["llama"], "--dataset", str(tmp_path / "pairs.jsonl")])
    assert code == 2 and "not an hf_smoe reward model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "checkpoint"), "--dataset", str(tmp_path / "pairs.jsonl"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "checkpoint" / "eval_results.json").exists()
