"""Does the sparse preset cost accuracy against a single head, and which part of its objective does? Frozen-backbone
heads on every shared preference set (HH, DSP with its criterion, the demo set, the general mixture, and their union,
whose 7 categories stand in for data with many categories), measured on validation (test is never read; experts
labelled on train) while choosing; `--measure_on test` reports the choice (trained on train, experts labelled on
validation, measured on test, as Table 1). Rows: a single head, the sparse preset with the paper's loss weights, and the sparse preset with one
term changed at a time (λ_div, λ_ls/λ_gb, K), 3 seeds each. Writes accuracy, purity and coverage to table.md and
results.json beside the exact command. `--tune_layers k` trains each row's head jointly with the backbone's top k
layers under its own objective (`train_tuned_preset`, bf16 autocast on CPUs that have it) and measures it on its own
tuned features; `--variants` runs some rows only.

    python scripts/sparse_vs_single.py --output outputs/sparse_vs_single
    python scripts/sparse_vs_single.py --datasets general --variants single "sparse λ_div=0.5 (default)" \
        --tune_layers 2 --measure_on test --output outputs/sparse_vs_single_tuned
"""

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import concatenate_datasets
from transformers import HfArgumentParser

from hf_smoe.evaluation import evaluate_head
from hf_smoe.features import FEATURE_COLUMNS
from hf_smoe.reproduce.reproduction_datasets import DSP_MAX_LENGTH, general_data, prepare, reproduction_data
from hf_smoe.reproduce.table1 import without_test
from hf_smoe.runtime import fast_dtype, load_frozen_backbone, run_command
from hf_smoe.training import train_head, train_tuned_preset
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
    variants: list[str] = field(default_factory=lambda: [row for row, *_ in VARIANTS])
    tune_layers: int = 0
    layers_learning_rate: float = 5e-5


def shared_features(names, backbone, tokenizer, cache_dir, data_root) -> tuple:
    """(name -> {train, validation, test} features (category column kept), name -> (pair splits, max length));
    "union" concatenates the others' features and has no pair splits."""
    sets, splits = {}, {}
    for name in [n for n in names if n != "union"] + (["hh", "dsp", "general"] if "union" in names else []):
        if name in sets:
            continue
        if name == "general":
            pairs, features = general_data(backbone, tokenizer, cache_dir=cache_dir, data_root=data_root)
            splits[name] = (pairs, DSP_MAX_LENGTH)
        else:
            data = reproduction_data(name)
            pairs, features = prepare(data, backbone, tokenizer, cache_dir=cache_dir, data_root=data_root)
            splits[name] = (pairs, data.max_length)
        sets[name] = {part: features[part].select_columns([*FEATURE_COLUMNS, "category"])
                      for part in PARTS}
    if "union" in names:  # HH's pairs are in general too: take WebGPT from general only
        webgpt = {part: sets["general"][part].filter(lambda row: row["category"] == "webgpt")
                  for part in PARTS}
        sets["union"] = {part: concatenate_datasets([sets["hh"][part], sets["dsp"][part], webgpt[part]])
                         for part in PARTS}
    return {name: sets[name] for name in names}, splits


def run(args: SparseVsSingleArguments) -> dict:
    unknown = set(args.variants) - {row for row, *_ in VARIANTS}
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {[row for row, *_ in VARIANTS]}.")
    if args.tune_layers and "union" in args.datasets:
        raise SystemExit("--datasets: 'union' has no pair splits of its own to tune on; run its parts.")
    backbone, tokenizer = load_frozen_backbone(args.backbone)
    sets, pair_splits = shared_features(args.datasets, backbone, tokenizer, args.cache_dir, args.data_root)
    view = without_test if args.measure_on == "validation" else dict  # experts labelled on train, test never read
    training = {"layers_learning_rate": args.layers_learning_rate, "report_to": "none",
                "train_sampling_strategy": "group_by_length", "use_cpu": not torch.cuda.is_available(),
                "bf16": torch.cuda.is_available() or fast_dtype(torch.device("cpu")) == torch.bfloat16}
    results = {}
    for name, features in sets.items():
        categories = len(set(features["train"]["category"]))
        parts = PARTS if args.measure_on == "test" else ("train", "validation")
        for row, preset, overrides, k_rule in [variant for variant in VARIANTS if variant[0] in args.variants]:
            k = None if preset == "single" else categories + 1 if k_rule == "categories+1" else k_rule
            runs = []
            for seed in args.seeds:
                folder = str(Path(args.output) / "trainer")
                if args.tune_layers:
                    splits, max_length = pair_splits[name]
                    model, features_of = train_tuned_preset(backbone, tokenizer, splits, preset, k, seed,
                                                            args.epochs, folder, args.tune_layers, training,
                                                            cache_dir=args.cache_dir, max_length=max_length,
                                                            **overrides)
                    measured = {part: features_of(splits[part]) for part in parts}
                else:
                    model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset=preset,
                                                          num_experts=k, **overrides)
                    train_head(model, view(features), folder, seed, args.epochs, report_to="none")
                    measured = features
                metrics = evaluate_head(model, view(measured))
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
    rows = [row for row, *_ in VARIANTS if row in args.variants]
    backbone = f"the top {args.tune_layers} layers tuned with each head" if args.tune_layers else "frozen backbone"
    lines = [f"`{run_command()}`", ""]
    for key in METRICS:
        lines += [f"{args.measure_on.capitalize()} {key} (mean ± std over seeds; {backbone}; K = categories + 1 "
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
