"""The `smoe` command line: demo and train end to end (real data, real backbone in the slow tests), and the parsing
mechanism every command shares."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_remote_code import LOADER
from transformers import AutoModel, AutoTokenizer

from hf_smoe import encode_pair
from hf_smoe.cli.main import main

HH_HELPFUL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base.test.jsonl.gz"


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "hf_smoe.cli", "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("demo", "embed", "train", "eval", "interpret", "reproduce", "steer", "adapt", "bench"):
        assert command in result.stdout


def load_in_clean_process(checkpoint: Path, tokenizer, tmp_path) -> dict:
    """Rewards from a process that cannot import hf_smoe (the plain-transformers user)."""
    batch = tokenizer.pad([encode_pair(tokenizer, "How do I boil an egg?", "Simmer it for nine minutes."),
                           encode_pair(tokenizer, "Hi", "Hello! How can I help?")], return_tensors="pt")
    (tmp_path / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    subprocess.run([sys.executable, "-I", "-c", LOADER, str(checkpoint), str(tmp_path / "batch.json"),
                    str(tmp_path / "out.json")], check=True, cwd=tmp_path, env=env, timeout=600)
    return batch, json.loads((tmp_path / "out.json").read_text())["AutoModel"]


# The real 30-layer backbone scored in two processes: one clean-clone CI run differed by 1.6e-4 (a rerun of the same
# commit matched to 1e-5; loading is deterministic across seeds, so no weight is left uninitialised). A wrong load
# differs by more than 0.1.
REAL_BACKBONE_ATOL = 1e-3


def check_checkpoint(output: Path, tmp_path, atol: float = 1e-5) -> None:
    """Loads, scores like the model in this process (to `atol`), and carries its card and exact command."""
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch, remote = load_in_clean_process(output, tokenizer, tmp_path)
    with torch.no_grad():
        local = AutoModel.from_pretrained(output)(**batch)
    torch.testing.assert_close(torch.tensor(remote["logits"]), local.logits, atol=atol, rtol=0)
    card = (output / "README.md").read_text()
    assert "model-index" in card
    assert f'AutoModel.from_pretrained("{output.resolve()}", trust_remote_code=True)' in card  # not the staging folder
    assert ".partial" not in card
    assert json.loads((output / "results.json").read_text())["command"]


@pytest.mark.slow
def test_train_on_real_hh_data_with_a_tiny_backbone(backbone_dirs, tmp_path, capsys):
    output = tmp_path / "run"
    code = main(["train", "--dataset", str(HH_HELPFUL), "--backbone", backbone_dirs["llama"], "--max-pairs", "60",
                 "--max-length", "128", "--epochs", "1", "--num-experts", "3", "--output-dir", str(output),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert results["job"]["data"]["max_pairs"] == 60 and results["job"]["model"]["preset"] == "sparse"
    assert results["job"]["training"]["num_train_epochs"] == 1 and results["job"]["training"]["seed"] == 0
    assert 0.0 <= results["results"]["accuracy"] <= 1.0
    check_checkpoint(output, tmp_path)


def test_train_heads_only_writes_the_head_alone_and_loads_like_the_full_run(backbone_dirs, tmp_path):
    """The same job twice, full and --heads_only: the heads-only folder holds the head's weights alone and a
    reference to the backbone folder, and both load to the same rewards."""
    common = ["train", "--dataset", str(HH_HELPFUL), "--backbone", backbone_dirs["llama"], "--max_pairs", "40",
              "--max_length", "128", "--epochs", "1", "--num_experts", "3", "--cache_dir", str(tmp_path / "cache")]
    assert main([*common, "--output_dir", str(tmp_path / "full")]) == 0
    assert main([*common, "--output_dir", str(tmp_path / "heads"), "--heads_only"]) == 0
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["backbone_source"] == {"name_or_path": str(Path(backbone_dirs["llama"]).resolve()), "revision": None}
    sizes = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("full", "heads")}
    assert sizes["heads"] < 20_000 < sizes["full"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "heads")
    batch = tokenizer.pad([encode_pair(tokenizer, "How do I boil an egg?", "Simmer it for nine minutes.")],
                          return_tensors="pt")
    with torch.no_grad():
        full, heads = (AutoModel.from_pretrained(tmp_path / name)(**batch) for name in ("full", "heads"))
    assert torch.equal(full.logits, heads.logits) and torch.equal(full.routing_weights, heads.routing_weights)


def test_default_k_is_one_expert_per_category_and_one_more():
    """The paper's rule (SHP: 4 categories, K = 5) when `--num_experts` is not given; the config's default (5, or
    1 for single) when the pairs carry fewer than two categories; at most 50."""
    from datasets import Dataset

    from hf_smoe.training.job import default_num_experts

    def pairs(categories):
        return Dataset.from_dict({"prompt": ["p"] * len(categories), "category": categories})

    nine = pairs([f"topic {i % 9}" for i in range(40)])
    assert default_num_experts("sparse", nine) == default_num_experts("micro", nine) == 10
    assert default_num_experts("single", nine) is None
    assert default_num_experts("sparse", pairs(["a", "", None, "a"])) is None  # one category once blanks are out
    assert default_num_experts("sparse", Dataset.from_dict({"prompt": ["p", "q"]})) is None
    assert default_num_experts("sparse", pairs([str(i) for i in range(80)])) == 50


def test_train_without_num_experts_gives_each_category_an_expert_and_one_more(backbone_dirs, tmp_path):
    from hf_smoe.data.synthetic import generate_preference_set

    pairs = generate_preference_set(60, seed=6)
    three = sorted(set(pairs["category"]))[:3]
    pairs.filter(lambda row: row["category"] in three).to_json(tmp_path / "pairs.jsonl")
    assert main(["train", "--dataset", str(tmp_path / "pairs.jsonl"), "--backbone", backbone_dirs["llama"],
                 "--max_length", "64", "--epochs", "1", "--output_dir", str(tmp_path / "run"),
                 "--cache_dir", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_experts"] == 4


@pytest.mark.slow
def test_demo_end_to_end_on_the_embedded_defaults(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(output), "--num-prompts", "40", "--epochs", "1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    table = (output / "demo_table.md").read_text()
    assert table in printed
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["single", "vanilla", "micro", "sparse"]
    results = json.loads((output / "results.json").read_text())["results"]
    assert {"category_coverage", "expert_purity"} <= set(results["sparse"])
    check_checkpoint(output, tmp_path, atol=REAL_BACKBONE_ATOL)


@pytest.mark.slow
def test_train_default_backbone_on_hh(tmp_path):
    """`smoe train` end to end on the shared HH folder with the default backbone."""
    output = tmp_path / "hh"
    assert main(["train", "--dataset", str(HH_HELPFUL.parent), "--max-pairs", "24", "--max-length", "256", "--epochs", "1",
                 "--output-dir", str(output), "--cache-dir", str(tmp_path / "cache")]) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == "llama" and config["backbone_config"]["hidden_size"] == 576
    assert config["num_experts"] == 5  # no --num-experts, and the HH files carry no category column
    check_checkpoint(output, tmp_path, atol=REAL_BACKBONE_ATOL)


def test_too_small_a_dataset_is_one_clear_line(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--num-prompts", "16", "--cache-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "split(s) empty" in error and "use more pairs or prompts" in error


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--dataset", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "missing.jsonl" in error
    assert main(["train", "--dataset", "x", "--output-dir", "y", "--no-such-flag", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--no-such-flag" in error


# The parsing mechanism every command shares: recipes, positional arguments, passed-on training flags, help.

def parse(command: str, *argv) -> tuple:
    """What `smoe COMMAND ARGV` hands its `main`."""
    from hf_smoe.cli.commands import load_command

    return load_command(command).make_parser().parse_command_line([str(arg) for arg in argv])


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_help_lists_every_command_with_its_one_line(capsys):
    from hf_smoe.cli.commands import COMMANDS, summary

    assert main(["--help"]) == 0
    listed = [line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [name for name, _ in listed] == list(COMMANDS)
    for name, line in listed:
        assert line == summary(name) and line.strip()
    assert main([]) == 0 and "tune-backbone" in capsys.readouterr().out


@pytest.mark.parametrize("command, fragment", [
    ("demo", "prompts to generate"), ("embed", "Hub dataset name or local file/folder"),
    ("train", "Learning rate of the router"), ("tune-backbone", "the top layers tuned"),
    ("eval", "JSON file (default: CHECKPOINT/eval_results.json)"), ("interpret", "skip the random baseline"),
    ("reproduce", "the numbers of experts"), ("steer", "0 removes the expert"),
    ("adapt", "pairs to adapt on"), ("push", "branch to push to"), ("bench", "texts to encode")])
def test_each_command_help_comes_from_its_fields(command, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and fragment in help_text
    assert f"usage: smoe {command} [RECIPE.yaml]" in help_text and "--config RECIPE.yaml" in help_text


def test_an_unknown_command_is_one_error_line(capsys):
    assert main(["trian"]) == 2
    assert "smoe: error: unknown command 'trian'" in capsys.readouterr().err


def test_positional_arguments_are_their_fields_flags():
    assert parse("eval", "ckpt", "--dataset", "d.jsonl") == parse("eval", "--checkpoint", "ckpt", "--dataset",
                                                                  "d.jsonl")
    push = parse("push", "ckpt", "org/name", "--private")[0]
    assert (push.checkpoint, push.repo_id, push.private) == ("ckpt", "org/name", True)
    assert parse("push", "--repo-id", "org/name", "--checkpoint", "ckpt", "--private") == (push,)
    assert parse("bench", "--what", "users")[0].what == parse("bench", "users")[0].what == "users"


def test_a_missing_or_extra_positional_argument_is_refused(capsys):
    assert main(["push", "ckpt", "org/name", "third"]) == 2
    assert "unrecognized arguments: third" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["push", "ckpt"])
    assert "--repo_id" in capsys.readouterr().err


def test_config_and_positional_recipe_with_flags_overriding_them(tmp_path):
    recipe = write_recipe(tmp_path / "eval.yaml", "checkpoint: from-recipe\ndataset: d.jsonl\nmax-pairs: 5\n"
                                                  "seed: 3\noverwrite: true\n")
    checkpoint, data, output = parse("eval", "--config", recipe, "--seed", 4)
    assert (checkpoint.checkpoint, data.dataset, data.max_pairs, data.seed, output.overwrite) == (
        "from-recipe", "d.jsonl", 5, 4, True)
    assert parse("eval", recipe, "other", "--max_pairs", 7) == parse("eval", f"--config={recipe}", "--max-pairs", 7,
                                                                     "--checkpoint", "other")
    assert parse("eval", recipe, "other")[0].checkpoint == "other"  # the positional beats the recipe


def test_train_config_sets_every_dataclass_and_keeps_the_train_defaults(tmp_path):
    recipe = write_recipe(tmp_path / "train.yaml", "dataset: d.jsonl\nnum_experts: 3\nlearning_rate: 1e-3\n"
                                                   "heads_only: true\noutput_dir: out\nlambda_div: 0.5\n")
    data, model, training = parse("train", "--config", recipe, "--lambda_div", 0.25)
    assert data.dataset == "d.jsonl" and model.num_experts == 3 and model.heads_only is True
    assert model.lambda_div == 0.25 and training.learning_rate == 1e-3
    assert (training.save_strategy, training.save_total_limit, training.seed) == ("epoch", 1, 0)
    assert parse("train", recipe)[:2] == (data, dataclasses.replace(model, lambda_div=0.5))


def test_reproduce_config_passes_on_only_the_training_flags_given(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "experiment: table1\nseeds: [0, 1]\nsize: [hh=30, dsp=6]\n"
                                               "learning_rate: 0.01\nper_device_train_batch_size: 8\n")
    reproduce, *_, training = parse("reproduce", "--config", recipe, "--learning_rate", 0)
    assert reproduce.experiment == "table1" and reproduce.seeds == [0, 1]
    assert reproduce.sizes() == {"hh": 30, "dsp": 6}
    assert training == {"learning_rate": 0.0, "per_device_train_batch_size": 8}
    assert parse("reproduce", "fig2")[-1] == {} and parse("demo", "--epochs", 2)[-1] == {}
    backbone = parse("reproduce", "backbone", "--weight_decay", 0.1)
    assert backbone[-1] == {"weight_decay": 0.1}


def test_flags_a_training_command_sets_itself_are_refused(tmp_path, capsys):
    assert main(["demo", "--overwrite"]) == 2
    assert "overwrite_output_dir: `smoe demo` sets it itself" in capsys.readouterr().err
    recipe = write_recipe(tmp_path / "r.yaml", "experiment: fig2\nnum_train_epochs: 2\n")
    assert main(["reproduce", "--config", str(recipe)]) == 2
    assert "num_train_epochs: `smoe reproduce` sets it itself; use --epochs" in capsys.readouterr().err
    assert main(["reproduce", "backbone", "--router_learning_rate", "1"]) == 2
    assert "unrecognized arguments: --router_learning_rate 1" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("checkpoint: c\ndataset: d\nnum_expert: 3\n", "unknown key(s) ['num_expert']; keys are `smoe eval` flags"),
    ("- checkpoint\n- c\n", "expected a mapping of flag names to values, got list"),
    ("checkpoint: [c\n", "not valid YAML"),
])
def test_a_bad_recipe_is_one_line(tmp_path, capsys, text, message):
    recipe = write_recipe(tmp_path / "r.yaml", text)
    assert main(["eval", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("smoe eval: error: recipe ") and message in error


def test_recipe_file_errors_are_one_line(tmp_path, capsys):
    assert main(["steer", str(tmp_path / "none.yaml")]) == 2
    assert "smoe steer: error: recipe: no such file" in capsys.readouterr().err
    recipe = write_recipe(tmp_path / "r.yaml", "dataset: d\n")
    assert main(["embed", str(recipe), "--config", str(recipe)]) == 2
    assert "got 2 recipes" in capsys.readouterr().err
    assert main(["embed", "--config"]) == 2
    assert "--config: expected the path of a YAML recipe" in capsys.readouterr().err


def test_value_checks_name_the_flag(capsys):
    assert main(["bench", "scale", "--pairs", "10", "0"]) == 2
    assert "smoe bench: error: --pairs: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--epochs", "inf"]) == 2
    assert "--epochs: must be a finite number > 0, got inf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "table1", "--datasets", "hh", "shp"])
    assert "invalid choice: 'shp'" in capsys.readouterr().err
