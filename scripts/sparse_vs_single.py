"""Does the sparse preset cost accuracy against a single head, and which part of its objective does? Frozen-backbone
heads on every shared preference set (HH, DSP with its criterion, the demo set, the general mixture, and their union,
whose 7 categories stand in for data with many categories), measured on validation (test is never read; experts
labelled on train) while choosing; `--measure_on test` reports the choice (trained on train, experts labelled on
validation, measured on test, as Table 1). Rows: a single head, the sparse preset with the paper's loss weights, and the sparse preset with one
term changed at a time (λ_div, λ_ls/λ_gb, K), 3 seeds each. Writes accuracy, purity and coverage to table.md and
results.json beside the exact command.

    python scripts/sparse_vs_single.py --output outputs/sparse_vs_single
"""

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import concatenate_datasets
from transformers import HfArgumentParser

from hf_smoe.evaluation import evaluate_head
from hf_smoe.features import FEATURE_COLUMNS
from hf_smoe.reproduce.reproduction_datasets import general_data, prepare, reproduction_data
from hf_smoe.runtime import load_frozen_backbone, run_command
from hf_smoe.training import train_head
from hf_smoe.modeling.modeling_smoe import SMoERewardModel

# (row name, preset, config overrides, K rule): "categories+1" is `smoe train`'s default K. The λ_ls / λ_gb
# and K rows change one term of the paper's weights (0.5, 0.5, 2).
VARIANTS = (("single", "single", {}, None),
            ("sparse λ_div=2 (the paper's)", "sparse", {"lambda_div": 2.0}, "categories+1"),
            ("sparse λ_div=1", "sparse", {"lambda_div": 1.0}, "categories+1"),
            ("sparse λ_div=0.5 (default)", "sparse", {"lambda_div": 0.5}, "categories+1"),
            ("sparse λ_div=0", "sparse", {"lambda_div": 0.0}, "categories+1"),
            ("sparse λ_ls=λ_gb=1, λ_div=2", "sparse", {"lambda_local": 1.0, "lambda_global": 1.0, "lambda_div": 2.0},
             "categories+1"),
            ("sparse K=2, λ_div=2", "sparse", {"lambda_div": 2.0}, 2))


METRICS = ("accuracy", "expert_purity", "category_coverage")
PARTS = ("train", "validation", "test")


@dataclass
class SparseVsSingleArguments:
    datasets: list[str] = field(default_factory=lambda: ["hh", "dsp", "demo", "general", "union"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: float = 3.0
    backbone: str = "default"
    cache_dir: str | None = None
    data_root: str | None = None
    output: str = "outputs/sparse_vs_single"
    measure_on: str = field(default="validation", metadata={"choices": ["validation", "test"]})


def shared_features(names, backbone, tokenizer, cache_dir, data_root) -> dict:
    """name -> {train, validation, test} features (category column kept); "union" concatenates the others'
    splits."""
    sets = {}
    for name in [n for n in names if n != "union"] + (["hh", "dsp", "general"] if "union" in names else []):
        if name in sets:
            continue
        if name == "general":
            _, features = general_data(backbone, tokenizer, cache_dir=cache_dir, data_root=data_root)
        else:
            _, features = prepare(reproduction_data(name), backbone, tokenizer, cache_dir=cache_dir,
                                  data_root=data_root)
        sets[name] = {part: features[part].select_columns([*FEATURE_COLUMNS, "category"])
                      for part in PARTS}
    if "union" in names:  # HH's pairs are in general too: take WebGPT from general only
        webgpt = {part: sets["general"][part].filter(lambda row: row["category"] == "webgpt")
                  for part in PARTS}
        sets["union"] = {part: concatenate_datasets([sets["hh"][part], sets["dsp"][part], webgpt[part]])
                         for part in PARTS}
    return {name: sets[name] for name in names}


def run(args: SparseVsSingleArguments) -> dict:
    backbone, tokenizer = load_frozen_backbone(args.backbone)
    sets = shared_features(args.datasets, backbone, tokenizer, args.cache_dir, args.data_root)
    results = {}
    for name, features in sets.items():
        categories = len(set(features["train"]["category"]))
        view = (features if args.measure_on == "test" else
                {"train": features["train"], "validation": features["train"], "test": features["validation"]})
        for row, preset, overrides, k_rule in VARIANTS:
            k = None if preset == "single" else categories + 1 if k_rule == "categories+1" else k_rule
            runs = []
            for seed in args.seeds:
                model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset=preset, num_experts=k,
                                                      **overrides)
                train_head(model, view, str(Path(args.output) / "trainer"), seed, args.epochs, report_to="none")
                metrics = evaluate_head(model, view)
                runs.append({key: metrics.get(key) for key in METRICS})
            results.setdefault(name, {"categories": categories, "pairs": len(features["train"])})[row] = runs
            print(name, row, k, *(f"{key} {cell(runs, key)}" for key in METRICS), flush=True)
        write(args, results)
    return results


def cell(runs: list, key: str) -> str:
    values = [run[key] for run in runs if run[key] is not None]
    if not values:
        return "-"
    scale = 1 if key == "category_coverage" else 100
    return (f"{scale * statistics.fmean(values):.{2 if scale == 1 else 1}f}"
            + (f" ± {scale * statistics.stdev(values):.{2 if scale == 1 else 1}f}" if len(values) > 1 else ""))


def write(args, results) -> None:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = [row for row, *_ in VARIANTS]
    lines = [f"`{run_command()}`", ""]
    for key in METRICS:
        lines += [f"{args.measure_on.capitalize()} {key} (mean ± std over seeds; frozen backbone; K = categories + 1 "
                  "unless said)", "",
                  "| dataset | categories | train pairs | " + " | ".join(rows) + " |", "|---" * (3 + len(rows)) + "|"]
        lines += [f"| {name} | {result['categories']} | {result['pairs']} | "
                  + " | ".join(cell(result[row], key) if row in result and (row != "single" or key == "accuracy")
                               else "-" for row in rows) + " |"
                  for name, result in results.items()]
        lines.append("")
    (output / "table.md").write_text("\n".join(lines))
    (output / "results.json").write_text(json.dumps({"command": run_command(), "arguments": asdict(args),
                                                     "variants": [list(v) for v in VARIANTS],
                                                     "results": results}, indent=2))


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(SparseVsSingleArguments).parse_args_into_dataclasses(sys.argv[1:])
    run(arguments)
