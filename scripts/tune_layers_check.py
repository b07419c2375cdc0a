"""Table 1's category recovery with the backbone's top k layers tuned under each preset's own objective
(`smoe train --tune_layers k`) against the frozen backbone, on a reproduction's split (the one `smoe reproduce table1`
uses: fixed, seed 0), per seed. Writes every run's test metrics and a Markdown table beside the exact command.

    python scripts/tune_layers_check.py --dataset hh --tune_layers 0 2 --seeds 0 --output outputs/tune_layers_hh
"""

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_smoe.evaluation import evaluate_head
from hf_smoe.features import EmbeddingCache
from hf_smoe.reproduce.reproduction_datasets import reproduction_data, reproduction_splits
from hf_smoe.runtime import load_backbone_model, run_command
from hf_smoe.training import DataArguments, ModelArguments, SMoETrainingArguments, train_head
from hf_smoe.training.job import train_top_layers

COLUMNS = ("accuracy", "expert_purity", "category_coverage", "expert_specialization", "routing_entropy",
           "global_entropy", "expert_correlation")


@dataclass
class TuneLayersCheckArguments:
    dataset: str = field(default="hh", metadata={"help": "hh, dsp or demo (a reproduction's data and split)"})
    presets: list[str] = field(default_factory=lambda: ["single", "vanilla", "micro", "sparse"])
    tune_layers: list[int] = field(default_factory=lambda: [0, 2], metadata={"help": "k per row; 0: frozen"})
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = 3.0
    layers_learning_rate: float = 5e-5
    backbone: str = "default"
    cache_dir: str | None = None
    data_root: str | None = None
    output: str = "outputs/tune_layers_check"


def run(args: TuneLayersCheckArguments) -> dict:
    data = reproduction_data(args.dataset, None)
    splits = reproduction_splits(data, args.data_root)
    runs = []
    for k in args.tune_layers:
        for preset in args.presets:
            for seed in args.seeds:
                started = time.time()
                model, tokenizer = load_backbone_model(args.backbone, preset, 1 if preset == "single"
                                                       else data.num_experts, seed)
                training = {"num_train_epochs": args.epochs, "layers_learning_rate": args.layers_learning_rate,
                            "disable_tqdm": True, "report_to": "none"}
                folder = Path(args.output) / "trainer" / f"k{k}-{preset}-{seed}"
                if k:
                    train_top_layers(model, tokenizer, splits,
                                     DataArguments(dataset=args.dataset, max_length=data.max_length,
                                                   cache_dir=args.cache_dir),
                                     ModelArguments(tune_layers=k),
                                     SMoETrainingArguments(output_dir=str(folder), seed=seed, **training))
                    names = ("validation", "test")
                else:
                    names = tuple(splits)
                cache = EmbeddingCache(model, tokenizer, cache_dir=args.cache_dir, max_length=data.max_length)
                features = {name: cache.pair_features(splits[name]) for name in names}
                if not k:
                    train_head(model, features, str(folder), seed, args.epochs, **{
                        name: value for name, value in training.items() if name != "num_train_epochs"})
                metrics = evaluate_head(model, features)
                runs.append({"tune_layers": k, "preset": preset, "seed": seed, "seconds": time.time() - started,
                             **{key: metrics.get(key) for key in COLUMNS},
                             "accuracy_by_category": metrics.get("accuracy_by_category")})
                print(json.dumps(runs[-1]), flush=True)
                write(args, runs)
    return {"runs": runs}


def write(args, runs) -> None:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"`{run_command()}`", "", "| k | preset | seeds | " + " | ".join(COLUMNS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]
    for k in args.tune_layers:
        for preset in args.presets:
            rows = [r for r in runs if r["tune_layers"] == k and r["preset"] == preset]
            if rows:
                cells = []
                for key in COLUMNS:
                    values = [r[key] for r in rows if r[key] is not None]
                    cells.append("-" if not values else f"{100 * statistics.fmean(values):.1f}"
                                 + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""))
                lines.append(f"| {k} | {preset} | {len(rows)} | " + " | ".join(cells) + " |")
    (output / "table.md").write_text("\n".join(lines) + "\n")
    (output / "results.json").write_text(json.dumps({"command": run_command(), "arguments": asdict(args),
                                                     "runs": runs}, indent=2))


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(TuneLayersCheckArguments).parse_args_into_dataclasses(sys.argv[1:])
    run(arguments)
