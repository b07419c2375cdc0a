"""`smoe reproduce`: the datasets it builds, its aggregation and the files it writes (tiny backbone, real data)."""

import json
import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from datasets import Dataset, Value
from transformers import AutoModel

from hf_smoe import encode_pair
from hf_smoe.cli.main import main
from hf_smoe.data import CRITERION_TEMPLATE, DSP_CRITERIA, load_pairs
from hf_smoe.evaluation import head_outputs
from hf_smoe.features import EmbeddingCache, as_training_features
from hf_smoe.personalization import steering_report
from hf_smoe.runtime.loading import load_checkpoint
from hf_smoe.reproduce import (reproduce_fig2, reproduce_fig6, reproduce_personalization, reproduce_table1,
                               reproduce_table4, reproduce_table8, reproduce_table14, resolve_data_root)
from hf_smoe.reproduce.personalization import dsp_user_pairs
from hf_smoe.reproduce.reproduction_datasets import (SPLIT_FRACTIONS, dsp_with_criterion, hh_mixture,
                                                     reproduction_data, reproduction_splits, without_criterion)
from hf_smoe.reproduce.results import summarize
from hf_smoe.metrics import routing_diagnosis
from hf_smoe.evaluation.probes import (L2_GRID, bradley_terry_loss, bradley_terry_probe, category_probe, fit_linear_probe,
                            preference_probes)
from hf_smoe.errors import InputError
from hf_smoe.interpret import ReadingSettings
from hf_smoe.training.job import split_for_training
from hf_smoe.testing import save_tiny_causal_lm

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_hh_mixture_is_both_subsets_with_the_subset_as_category():
    pairs = hh_mixture(7, seed=3, data_root=SHARED_DATA)
    assert pairs["category"] == ["helpful"] * 7 + ["harmless"] * 7
    helpful = load_pairs(SHARED_DATA / "hh-rlhf" / "helpful-base.test.jsonl.gz", max_pairs=7, seed=3)
    assert pairs.select(range(7))["chosen"] == helpful["chosen"]


def test_the_data_root_is_the_flag_else_the_environment_and_never_a_packaged_default(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_SMOE_DATA", raising=False)
    with pytest.raises(InputError, match="data_root: .*pass --data-root DIR or set HF_SMOE_DATA=DIR"):
        resolve_data_root()
    with pytest.raises(InputError, match="data_root: no such folder"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("HF_SMOE_DATA", str(SHARED_DATA))
    assert resolve_data_root() == SHARED_DATA
    assert resolve_data_root(tmp_path) == tmp_path  # the flag wins over the variable
    assert hh_mixture(3, seed=0)["chosen"] == hh_mixture(3, seed=0, data_root=SHARED_DATA)["chosen"]


def test_dsp_keeps_every_pair_of_the_sampled_queries_and_their_domains_together():
    pairs = dsp_with_criterion(6, seed=1, data_root=SHARED_DATA)
    queries = sorted(set(pairs["query"]))
    assert len(queries) == 6
    for prompt, query, category in zip(pairs["prompt"], pairs["query"], pairs["category"]):
        assert prompt[-1]["content"] == CRITERION_TEMPLATE.format(prompt=query, criterion=DSP_CRITERIA[category])
    # a query has up to 4 domains x 4 rejected responses (pairs with two equal responses are dropped by the loader)
    counts = [pairs["query"].count(query) for query in queries]
    assert all(12 <= count <= 16 for count in counts) and sum(counts) == len(pairs)
    splits = split_for_training(pairs, 0, group_by="query", **SPLIT_FRACTIONS)
    seen = [set(split["query"]) for split in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def probe_features(separable: bool, n=200, hidden=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    categories = torch.randint(2, (n,), generator=generator)
    prompts = torch.randn(n, hidden, generator=generator)
    if separable:
        prompts[:, 0] += 6.0 * categories
    names = ["cooking", "travel"]
    return Dataset.from_dict({"prompt_embedding": prompts.numpy(), "chosen_embedding": prompts.numpy(),
                              "rejected_embedding": prompts.numpy(), "category": [names[c] for c in categories]})


def test_category_probe_finds_a_linear_category_and_not_noise():
    separable = category_probe({"train": probe_features(True), "validation": probe_features(True, seed=1)})
    assert separable["probe_accuracy"] > 0.97
    noise = category_probe({"train": probe_features(False), "validation": probe_features(False, seed=1)})
    assert noise["probe_accuracy"] < 0.65 and 0.4 < noise["majority_rate"] < 0.65


def conflicting_preferences(n=4000, hidden=6, seed=0):
    """chosen - rejected = (+2, 1) + noise for cooking and (-2, 1) + noise for travel: the categories disagree on
    dimension 0 and agree on dimension 1."""
    generator = torch.Generator().manual_seed(seed)
    categories = torch.arange(n) % 2
    rejected = torch.randn(n, hidden, generator=generator)
    difference = torch.randn(n, hidden, generator=generator)
    difference[:, 0] += torch.where(categories == 0, 2.0, -2.0)
    difference[:, 1] += 1.0
    return Dataset.from_dict({"prompt_embedding": rejected.numpy(), "chosen_embedding": (rejected + difference).numpy(),
                              "rejected_embedding": rejected.numpy(),
                              "category": [("cooking", "travel")[c] for c in categories]})


def test_preference_probes_show_each_categorys_preference_and_their_conflict():
    probes = preference_probes({"train": conflicting_preferences(), "validation": conflicting_preferences(seed=1)})
    assert list(probes) == ["all", "cooking", "travel"] and list(probes["all"]) == ["cooking", "travel"]
    # a head fitted on one category follows (2, 1): P(2 d0 + d1 > 0) on its own, P(-4 + 1 + noise > 0) on the other
    own, other = 0.5 * (1 + math.erf(5 / math.sqrt(5) / math.sqrt(2))), 0.5 * (1 + math.erf(-3 / math.sqrt(10)))
    for trained_on, foreign in (("cooking", "travel"), ("travel", "cooking")):
        assert probes[trained_on][trained_on] == pytest.approx(own, abs=0.06)
        assert probes[trained_on][foreign] == pytest.approx(other, abs=0.08)
    # on both, dimension 0 cancels and the shared dimension 1 is left: P(1 + noise > 0)
    shared = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert probes["all"]["cooking"] == pytest.approx(shared, abs=0.08)
    assert probes["all"]["travel"] == pytest.approx(shared, abs=0.08)


@pytest.mark.parametrize("signal", [False, True])
def test_the_bradley_terry_probe_chooses_its_ridge_by_cross_validation(signal):
    """Pure noise with more dimensions than pairs: the strongest ridge generalises best. A strong signal in few
    dimensions with many pairs: the weakest. Each is checked against the probe fitted at that strength directly."""
    generator = torch.Generator().manual_seed(0)
    differences = torch.randn(2000, 4, generator=generator) + 3.0 if signal else torch.randn(60, 100,
                                                                                             generator=generator)
    scale = differences.std(0)
    expected_l2 = min(L2_GRID) if signal else max(L2_GRID)
    direct = fit_linear_probe(differences / scale, 1, bradley_terry_loss, l2=expected_l2, bias=False).weight[0] / scale
    torch.testing.assert_close(bradley_terry_probe(differences), direct)


def test_summarize_is_mean_and_sample_std():
    runs = [{"accuracy": 0.5, "routing_entropy": 0.1, "expert_categories": ["a"]},
            {"accuracy": 0.7, "routing_entropy": 0.3, "expert_categories": ["b"]},
            {"accuracy": 0.9, "routing_entropy": 0.2, "expert_categories": ["a"]}]
    summary = summarize(runs)
    assert set(summary) == {"accuracy", "routing_entropy"}
    assert summary["accuracy"]["mean"] == pytest.approx(0.7)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert summarize(runs[:1])["accuracy"]["std"] == 0.0


def test_routing_diagnosis_follows_spec_7():
    assert routing_diagnosis(0.2, 0.99) == "healthy"
    assert routing_diagnosis(0.0, 0.0) == "collapsed"  # one expert for every prompt (paper: λ_gb = 0 rows)
    assert routing_diagnosis(1.0, 1.0) == "dense"  # uniform routing (paper: λ_ls = 0 rows)
    assert routing_diagnosis(0.142, 0.148) == "collapsed"  # paper Table 8, λ = (1, 0.5, 1)


def parse_cell(cell: str) -> tuple:
    mean, std = re.fullmatch(r"(-?[\d.]+) ± ([\d.]+)", cell.strip()).groups()
    return float(mean), float(std)


def test_table1_writes_the_table_json_command_and_heatmap(backbone_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["smoe", "reproduce", "table1", "--datasets", "hh"])
    record = reproduce_table1(datasets=("hh",), seeds=(0, 1), output_dir=tmp_path / "out",
                              backbone=backbone_dirs["llama"], epochs=1, cache_dir=tmp_path / "cache",
                              data_root=SHARED_DATA, sizes={"hh": 30})
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["command"] == "smoe reproduce table1 --datasets hh"
    runs = saved["results"]["hh"]["runs"]
    assert set(runs) == {"single", "vanilla", "micro", "sparse"} and all(len(r) == 2 for r in runs.values())
    assert saved["results"]["hh"]["pairs"] == "36/12/12"  # 30 prompts per subset -> 18/6/6 each
    # every sparse model labels its experts with the two HH subsets only
    assert {c for run in runs["sparse"] for c in run["expert_categories"]} <= {"helpful", "harmless"}

    table = (tmp_path / "out" / "table1.md").read_text()
    assert table.startswith("Command: `smoe reproduce table1 --datasets hh`")
    lines = table.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| preset | accuracy"))) + 2
    end = lines.index("", start)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines[start:end]}
    assert list(rows) == ["single", "vanilla", "micro", "sparse"]
    for preset, cells in rows.items():
        accuracies = [run["accuracy"] for run in runs[preset]]
        mean, std = parse_cell(cells[0])
        assert mean == pytest.approx(100 * np.mean(accuracies), abs=0.05)
        assert std == pytest.approx(100 * np.std(accuracies, ddof=1), abs=0.05)
    assert [cell.strip() for cell in rows["single"][1:]] == ["-"] * 6  # routing metrics do not apply to K = 1
    purity = parse_cell(rows["sparse"][5])[0]
    assert purity == pytest.approx(100 * np.mean([run["expert_purity"] for run in runs["sparse"]]), abs=0.05)
    assert record["hh"]["summary"]["sparse"]["expert_purity"]["mean"] == pytest.approx(purity / 100, abs=5e-4)

    for run in runs["sparse"] + runs["single"]:  # 6 test pairs in each category: overall = mean of the two
        assert run["accuracy"] == pytest.approx(np.mean(list(run["accuracy_by_category"].values())))
    assert "Category probe on the frozen backbone (linear, on the router's input" in table

    image = matplotlib.image.imread(tmp_path / "out" / "routing_hh.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 400


def test_table8_runs_the_grid_with_a_diagnosis_per_row(backbone_dirs, tmp_path):
    grid = ((0.5, 0.5, 2.0), (0.0, 0.0, 0.0))
    rows = reproduce_table8("hh", seeds=(0,), output_dir=tmp_path / "out", backbone=backbone_dirs["llama"],
                            epochs=1, cache_dir=tmp_path / "cache", data_root=SHARED_DATA, size=30, grid=grid)
    assert [row["lambdas"] for row in rows] == [list(lambdas) for lambdas in grid]
    for row in rows:
        summary = row["summary"]
        assert row["diagnosis"] == routing_diagnosis(summary["routing_entropy"]["mean"],
                                                     summary["global_entropy"]["mean"])
        run = row["runs"][0]
        assert summary["accuracy"]["mean"] == run["accuracy"]
    table = (tmp_path / "out" / "table8.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| 0")]
    assert [line.split("|")[1:4] for line in body] == [[" 0.5 ", " 0.5 ", " 2 "], [" 0 ", " 0 ", " 0 "]]
    for line, row in zip(body, rows):
        diagnosis = line.split("|")[-2].strip()
        assert diagnosis == (f"**{row['diagnosis']}**" if row["diagnosis"] == "healthy" else row["diagnosis"])


def test_training_flags_reach_every_head_a_reproduction_trains(backbone_dirs, tmp_path, monkeypatch):
    """`smoe reproduce ... --learning_rate 0 ...`: any training flag beside the command's own reaches each head's
    Trainer and the run's record."""
    import hf_smoe.reproduce.table1 as table1

    seen, train_preset = [], table1.train_preset

    def recording(*args, **kwargs):
        seen.append(args[8])  # `training`, after output_dir
        return train_preset(*args, **kwargs)

    monkeypatch.setattr(table1, "train_preset", recording)
    code = main([str(arg) for arg in (
        "reproduce", "table1", "--datasets", "hh", "--size", "hh=30", "--seeds", 0, "--epochs", 1,
        "--backbone", backbone_dirs["llama"], "--data-root", SHARED_DATA, "--cache-dir", tmp_path / "cache",
        "--output-dir", tmp_path / "out", "--learning_rate", 0, "--router_learning_rate", 0,
        "--per_device_train_batch_size", 8)])
    assert code == 0
    expected = {"learning_rate": 0.0, "router_learning_rate": 0.0, "per_device_train_batch_size": 8}
    assert seen == [expected] * 4  # single, vanilla, micro, sparse
    assert json.loads((tmp_path / "out" / "results.json").read_text())["job"]["training"] == expected


def test_table1_with_tuned_layers_trains_every_preset_and_probes_its_features(backbone_dirs, tmp_path, monkeypatch):
    """`--tune_layers 1`: every preset trains with the top layer, measured on validation without reading test, and
    the probe summary of each tuned model is the mean of its own probe matrix (diagonal, off-diagonal, all)."""
    monkeypatch.setattr("sys.argv", ["smoe", "reproduce", "table1", "--tune_layers", "1"])
    record = reproduce_table1(datasets=("hh",), seeds=(0,), output_dir=tmp_path / "out",
                              backbone=backbone_dirs["llama"], epochs=1, cache_dir=tmp_path / "cache",
                              data_root=SHARED_DATA, sizes={"hh": 30}, measure_on="validation", tune_layers=1,
                              training={"layers_learning_rate": 1e-3})
    result = record["hh"]
    assert result["tune_layers"] == 1 and set(result["tuned_probes"]) == {"single", "vanilla", "micro", "sparse"}
    assert all(len(runs) == 1 and 0 <= runs[0]["accuracy"] <= 1 for runs in result["runs"].values())
    lines = (tmp_path / "out" / "table1.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): [float(cell) for cell in line.split("|")[2:-1]]
            for line in lines if line.startswith(("| frozen |", "| tuned with "))}
    assert list(rows) == ["frozen", "tuned with single", "tuned with vanilla", "tuned with micro", "tuned with sparse"]
    for preset in ("single", "sparse"):
        probes = result["tuned_probes"][preset]
        matrix = probes["preference_probes"]
        own = np.mean([matrix[c][c] for c in ("harmless", "helpful")])
        other = np.mean([matrix["harmless"]["helpful"], matrix["helpful"]["harmless"]])
        every = np.mean([matrix["all"]["harmless"], matrix["all"]["helpful"]])
        expected = [100 * probes["category_probe"]["probe_accuracy"], 100 * own, 100 * other, 100 * every]
        assert rows[f"tuned with {preset}"] == pytest.approx(expected, abs=0.051)


def test_reproduce_refuses_tune_layers_where_it_does_not_apply(capsys):
    assert main(["reproduce", "fig6", "--tune_layers", "2"]) == 2
    assert "--tune-layers: fig6 trains on the frozen backbone" in capsys.readouterr().err


def test_reproduce_refuses_training_flags_it_sets_itself(capsys):
    assert main(["reproduce", "table1", "--num_train_epochs", "2"]) == 2
    assert "num_train_epochs: `smoe reproduce` sets it itself; use --epochs" in capsys.readouterr().err


def test_reproduce_rejects_a_bad_size_in_one_line(capsys):
    assert main(["reproduce", "table1", "--size", "hh=lots"]) == 2
    assert "--size: expected DATASET=N" in capsys.readouterr().err


def test_fig2_steers_on_prompts_without_the_criterion(backbone_dirs, tmp_path):
    summary = reproduce_fig2(seeds=(0,), output_dir=tmp_path / "out", backbone=backbone_dirs["llama"], epochs=1,
                             cache_dir=tmp_path / "cache", data_root=SHARED_DATA, size=6, num_experts=3)
    assert list(summary) == ["vanilla", "micro", "sparse", "sparse (random target)"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert saved["domains"] == sorted(DSP_CRITERIA)
    for name, reports in saved["runs"].items():
        report = reports[0]
        assert summary[name]["flip_rate"]["mean"] == pytest.approx(report["flip_rate"], nan_ok=True)
        by_weight = [report["flip_rate_by_weight"][str(w)] for w in (0.25, 0.5, 0.75, 1.0)]
        assert report["flip_rate"] == pytest.approx(np.nanmean(by_weight), nan_ok=True)
        if name != "sparse (random target)":
            assert len(report["targets"]) == 4 and all(0 <= t < 3 for t in report["targets"])
    table = (tmp_path / "out" / "fig2.md").read_text()
    assert "| sparse (random target) |" in table and "(K = 3;" in table
    sparse = summary["sparse"]["accuracy"]["mean"]  # each trained model's test accuracy, criterion appended
    sparse_row = next(line for line in table.splitlines() if line.startswith("| sparse |"))
    assert 0.0 <= sparse <= 1.0 and sparse_row.endswith(f"| {100 * sparse:.1f} |")
    assert (tmp_path / "out" / "fig2.png").stat().st_size > 1000
    steerable, _ = load_checkpoint(tmp_path / "out" / "sparse")  # for `smoe steer`
    assert steerable.config.preset == "sparse" and steerable.config.num_experts == 3


def test_fig2_with_tuned_layers_steers_the_tuned_model(backbone_dirs, tmp_path):
    """`tune_layers=1`: the saved sparse model carries its tuned top layer (the lower one bit-identical), and its
    steering report is what a full forward pass of that checkpoint on the test pairs without the criterion gives."""
    reproduce_fig2(seeds=(0,), output_dir=tmp_path / "out", backbone=backbone_dirs["llama"], epochs=1,
                   cache_dir=tmp_path / "cache", data_root=SHARED_DATA, size=6, num_experts=3, tune_layers=1,
                   training={"layers_learning_rate": 1e-2})
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["job"]["tune_layers"] == 1 and "top 1 layers tuned" in (tmp_path / "out" / "fig2.md").read_text()
    model, tokenizer = load_checkpoint(tmp_path / "out" / "sparse")
    original = dict(AutoModel.from_pretrained(backbone_dirs["llama"]).named_parameters())
    tuned = dict(model.backbone.named_parameters())
    assert all(torch.equal(tuned[name], value) for name, value in original.items() if name.startswith("layers.0."))
    assert any(not torch.equal(tuned[name], value) for name, value in original.items() if name.startswith("layers.1."))

    splits = reproduction_splits(reproduction_data("dsp", 6), SHARED_DATA)
    plain = without_criterion(splits["test"])
    features = EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "check", max_length=256, dtype=torch.float32,
                              show_progress=False).pair_features(plain)
    outputs = head_outputs(model.head, as_training_features(features))
    domains = saved["results"]["domains"]
    report = saved["results"]["runs"]["sparse"][0]
    expected = steering_report(outputs["routing_weights"], outputs["chosen_expert_rewards"],
                               outputs["rejected_expert_rewards"],
                               torch.tensor([domains.index(c) for c in plain["category"]]),
                               torch.tensor(report["targets"]))
    assert report["flip_rate"] == pytest.approx(expected["flip_rate"], nan_ok=True)
    assert report["undesired_flip_rate"] == pytest.approx(expected["undesired_flip_rate"], nan_ok=True)


def test_without_criterion_restores_the_bare_query():
    pairs = dsp_with_criterion(2, seed=0, data_root=SHARED_DATA)
    plain = without_criterion(pairs)
    assert [p[-1]["content"] for p in plain["prompt"]] == pairs["query"]
    assert plain["chosen"] == pairs["chosen"] and plain["category"] == pairs["category"]


def test_personalization_adapts_every_domain_and_reports_the_change(backbone_dirs, tmp_path):
    summary = reproduce_personalization(n_values=(2, 4), seeds=(0,), adaptation_sets=2, num_experts=3,
                                        output_dir=tmp_path / "out", backbone=backbone_dirs["llama"], epochs=1,
                                        cache_dir=tmp_path / "cache", data_root=SHARED_DATA, dsp_queries=8,
                                        general_sizes=(20, 10))
    assert list(summary) == ["single", "HyRe", "vanilla", "micro", "sparse"]
    domains = sorted(DSP_CRITERIA)
    for name, by_n in summary.items():
        for n, table in by_n.items():
            assert list(table) == [*domains, "overall"]
            for values in table.values():
                assert values["change"] == pytest.approx(values["after"] - values["before"])
            assert table["overall"]["after"] == pytest.approx(np.mean([table[d]["after"] for d in domains]))
    assert all(summary["single"][n]["overall"]["change"] == 0.0 for n in (2, 4))  # nothing to adapt
    # with one expert, the best expert is the model itself
    assert all(summary["single"][2][d]["best_expert"] == summary["single"][2][d]["before"] for d in domains)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    for domain, entry in saved["most_upweighted"].items():
        shift = saved["runs"]["sparse"][0][domain]["4"]["weight_shift"]
        assert entry["expert"] == int(np.argmax(shift)) and entry["shift"] == pytest.approx(max(shift))
    table = (tmp_path / "out" / "fig8.md").read_text()
    sparse = summary["sparse"][4]["overall"]
    assert f"{100 * sparse['after']:.1f} ({100 * sparse['change']:+.1f})" in table
    assert (tmp_path / "out" / "fig8.png").stat().st_size > 1000
    # the sparse row is trained with the paper's real-world λ_gb = 1.0 and saved for `smoe adapt`
    checkpoint, _ = load_checkpoint(tmp_path / "out" / "sparse")
    assert checkpoint.config.num_experts == 3 and checkpoint.config.lambda_global == 1.0
    assert checkpoint.config.lambda_local == 0.5 and checkpoint.config.lambda_div == 0.5
    job = json.loads((tmp_path / "out" / "results.json").read_text())["job"]
    assert job["config_overrides"]["sparse"] == {"lambda_global": 1.0} and job["config_overrides"]["vanilla"] == {}


def test_dsp_users_relabel_pairs_by_their_domain_weights():
    prompt = [{"role": "user", "content": "q"}]
    rows = [("academy", "A", "B"), ("academy", "A", "N"), ("business", "B", "A"), ("business", "B", "N")]
    pairs = Dataset.from_dict({"prompt": [prompt] * 4, "chosen": [r[1] for r in rows],
                               "rejected": [r[2] for r in rows], "category": [r[0] for r in rows],
                               "query": ["q"] * 4, "user": [None] * 4}).cast_column("user", Value("string"))
    users = {"u0": {"academy": 0.7, "business": 0.3}, "u1": {"academy": 0.0, "business": 1.0}}
    relabelled = dsp_user_pairs(pairs, users)
    got = sorted(zip(relabelled["user"], relabelled["chosen"], relabelled["rejected"]))
    # u0: A > B > N (the B-vs-A duplicate kept once); u1: B > A = N (the A-vs-N tie dropped)
    assert got == [("u0", "A", "B"), ("u0", "A", "N"), ("u0", "B", "N"), ("u1", "B", "A"), ("u1", "B", "N")]
    assert relabelled["category"] == relabelled["user"]


def test_personalization_with_tuned_layers_adapts_each_tuned_model(backbone_dirs, tmp_path):
    summary = reproduce_personalization(n_values=(2,), seeds=(0,), adaptation_sets=1, num_experts=3,
                                        output_dir=tmp_path / "out", backbone=backbone_dirs["llama"], epochs=1,
                                        cache_dir=tmp_path / "cache", data_root=SHARED_DATA, dsp_queries=8,
                                        general_sizes=(20, 10), tune_layers=1)
    assert list(summary) == ["single", "HyRe", "vanilla", "micro", "sparse"]
    assert summary["single"][2]["overall"]["change"] == 0.0  # nothing to adapt, tuned or not
    assert "top 1 layers tuned with each head" in (tmp_path / "out" / "table5.md").read_text()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["job"]["tune_layers"] == 1


def test_table13_adapts_to_dirichlet_users(backbone_dirs, tmp_path):
    summary = reproduce_personalization(n_values=(3,), seeds=(0,), adaptation_sets=1, num_experts=3,
                                        output_dir=tmp_path / "out", backbone=backbone_dirs["llama"], epochs=1,
                                        cache_dir=tmp_path / "cache", data_root=SHARED_DATA, dsp_queries=8,
                                        general_sizes=(20, 10), num_users=3)
    assert list(summary["sparse"][3]) == ["user_0", "user_1", "user_2", "overall"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    users = saved["job"]["users"]
    assert list(users) == ["user_0", "user_1", "user_2"]
    assert all(sorted(weights) == sorted(DSP_CRITERIA) and abs(sum(weights.values()) - 1) < 1e-9
               for weights in users.values())
    assert "Users (Dirichlet(0.3)" in (tmp_path / "out" / "table13.md").read_text()


def test_table4_describes_and_judges_every_row_and_measures_the_judge(backbone_dirs, tmp_path):
    lm = save_tiny_causal_lm(tmp_path / "tiny-lm")
    record = reproduce_table4(datasets=("dsp",), seeds=(0, 1), generator=lm, output_dir=tmp_path / "out",
                              backbone=backbone_dirs["llama"], epochs=1, cache_dir=tmp_path / "cache",
                              data_root=SHARED_DATA, generation_cache=tmp_path / "generations", dsp_queries=10,
                              num_experts=3, settings=ReadingSettings(per_stratum=10))
    dsp = record["dsp"]
    assert set(dsp["runs"]) == {"single", "vanilla", "micro", "random", "sparse"}
    for row in ("vanilla", "micro", "sparse"):
        for run in dsp["runs"][row]:
            experts = run["interpretation"]["experts"]
            assert len(experts) == 3 and run["description_fidelity"] == pytest.approx(
                np.mean([e["description_fidelity"] for e in experts]))
            assert run["fidelity_probability"] == pytest.approx(np.mean([e["fidelity_probability"] for e in experts]))
            assert run["expert_specialization"] == pytest.approx(
                np.nanmean([e["expert_specialization"] for e in experts]))
            assert -1 <= run["oracle_description_fidelity"] <= 1 and -1 <= run["oracle_fidelity_probability"] <= 1
        values = [run["description_fidelity"] for run in dsp["runs"][row]]
        assert dsp["summary"][row]["description_fidelity"]["mean"] == pytest.approx(np.mean(values))
    for key in ("description_fidelity", "fidelity_probability"):
        assert [r[key] for r in dsp["runs"]["random"]] == [
            r["interpretation"]["random_baseline"][key] for r in dsp["runs"]["sparse"]]
    check = dsp["judge_check"]
    assert set(check["yes_rates"]) == set(DSP_CRITERIA) and -1 <= check["ideal_fidelity"] <= 1
    assert -1 <= check["ideal_fidelity_probability"] <= 1 and 0 <= check["auc"] <= 1
    assert set(check["auc_per_category"]) == set(DSP_CRITERIA)
    markdown = (tmp_path / "out" / "table4.md").read_text()
    assert markdown.startswith("Command: `") and "| random |" in markdown and "ideal router" in markdown
    assert "| fidelity on P(YES) |" in markdown and "AUC of P(YES)" in markdown
    assert json.loads((tmp_path / "out" / "results.json").read_text())["job"]["generator"] == lm


def test_fig6_plots_fidelity_and_specialization_against_k(backbone_dirs, tmp_path):
    lm = save_tiny_causal_lm(tmp_path / "tiny-lm")
    summary = reproduce_fig6(k_values=(2, 4), seeds=(0,), generator=lm, output_dir=tmp_path / "out",
                             backbone=backbone_dirs["llama"], epochs=1, cache_dir=tmp_path / "cache",
                             data_root=SHARED_DATA, generation_cache=tmp_path / "generations",
                             general_sizes=(20, 10), settings=ReadingSettings(per_stratum=5))
    assert set(summary) == {2, 4}
    assert (tmp_path / "out" / "fig6.png").stat().st_size > 1000
    assert "| 4 |" in (tmp_path / "out" / "fig6.md").read_text()


def test_table14_aligns_two_policies_and_judges_them_with_other_reward_models(backbone_dirs, tmp_path):
    from hf_smoe.reproduce.alignment import answers

    policy = save_tiny_causal_lm(tmp_path / "policy")
    record = reproduce_table14(domain="entertainment", steps=2, n=5, eval_prompts=4, output_dir=tmp_path / "out",
                               backbone=backbone_dirs["llama"], policy=policy, epochs=1, cache_dir=tmp_path / "cache",
                               data_root=SHARED_DATA, dsp_queries=12, general_sizes=(20, 10), num_experts=3,
                               max_completion_length=4, max_new_tokens=6)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["job"]["steps"] == 2 and saved["results"]["win_rates"] == record["win_rates"]
    prompts = [row["prompt"] for row in record["answers"]]
    assert len(prompts) == 4 and not set(prompts) & set(dsp_with_criterion(12, 0, SHARED_DATA)["query"])
    for name in ("personalized", "universal"):  # the answers are the saved policies' greedy answers
        assert answers(tmp_path / "out" / f"policy_{name}", prompts, 6) == [row[name] for row in record["answers"]]
        assert len(record["grpo_rewards"][name]["rewards"]) == 2
    for judge in ("target", "quality"):
        margins = torch.tensor([row[f"{judge}_margin"] for row in record["answers"]])
        rates = record["win_rates"][judge]
        assert rates["first"] == (margins > 0).float().mean().item()
        assert rates["second"] == (margins < 0).float().mean().item()
        assert rates["first"] + rates["second"] + rates["ties"] == pytest.approx(1.0)
        for row in record["answers"]:  # identical answers tie exactly
            if row["personalized"] == row["universal"]:
                assert row[f"{judge}_margin"] == 0.0
    table = (tmp_path / "out" / "table14.md").read_text()
    assert "| universal |" in table and "Judges (not the reward optimised)" in table


def test_judge_margins_are_reward_differences_and_empty_answers_lose(checkpoint_and_data, tmp_path):
    from hf_smoe.reproduce.alignment import judge_margins
    from hf_smoe.features import EmbeddingCache

    model, tokenizer, _, _ = checkpoint_and_data
    prompts = ["what is the cat ?", "hello", "why rain ?", "code a poem", "hi"]
    first = ["a kind answer", "hello how are you", "", "sure here is a poem", ""]
    second = ["no", "hello how are you", "because sun", "", ""]
    margins = judge_margins(model, EmbeddingCache(model, tokenizer, cache_dir=tmp_path / "cache", show_progress=False),
                            prompts, first, second)
    def reward(prompt, response):
        with torch.no_grad():
            inputs = {k: torch.tensor([v]) for k, v in encode_pair(tokenizer, prompt, response).items()}
            return model.eval()(**inputs).logits.item()

    assert margins[0].item() == pytest.approx(reward(prompts[0], first[0]) - reward(prompts[0], second[0]), abs=1e-5)
    assert margins[1:].tolist() == [0.0, float("-inf"), float("inf"), 0.0]
