"""Table 8 (the λ ablation, App. C): which loss weights keep the sparse router from collapsing."""

from pathlib import Path

from ..metrics import routing_diagnosis
from ..runtime import DEFAULT_BACKBONE, load_frozen_backbone
from ..training import train_preset
from .reproduction_datasets import prepare, reproduction_data
from .results import markdown_header, markdown_row, mean_std_cell, metric_columns, summarize, write_results
from .settings import EPOCHS

LAMBDA_GRID = tuple((local, balance, diversity) for local in (0.0, 0.5, 1.0) for balance in (0.0, 0.5, 1.0)
                    for diversity in (0.0, 1.0, 2.0))
TABLE8_COLUMNS = metric_columns("accuracy", "routing_entropy", "global_entropy", "expert_correlation",
                                "expert_purity", "expert_specialization")


def table8_markdown(rows: list, dataset: str) -> str:
    """The λ grid, one row per (λ_ls, λ_gb, λ_div), with the collapse diagnosis; healthy rows in bold (as the
    paper marks the rows that do not collapse)."""
    lines = [f"### λ ablation on {dataset} (sparse preset; diagnosis of the mean: collapsed = global H < 0.5, "
             "dense = routing H > 0.5)", "",
             *markdown_header("λ_ls", "λ_gb", "λ_div", *(label for _, label, _ in TABLE8_COLUMNS), "diagnosis")]
    for row in rows:
        cells = [f"{value:g}" for value in row["lambdas"]]
        cells += [mean_std_cell(row["summary"], key, scale) for key, _, scale in TABLE8_COLUMNS]
        bold = row["diagnosis"] == "healthy"
        cells.append(f"**{row['diagnosis']}**" if bold else row["diagnosis"])
        lines.append(markdown_row(*cells))
    return "\n".join(lines) + "\n"


def reproduce_table8(dataset: str = "hh", seeds=(0,), output_dir="outputs/reproduce/table8",
                     backbone=DEFAULT_BACKBONE, epochs: float = EPOCHS, training: dict | None = None,
                     cache_dir=None, data_root=None,
                     size: int | None = None, grid=LAMBDA_GRID) -> list:
    """Table 8 (App. C): the sparse preset for every (λ_ls, λ_gb, λ_div) of `grid`, everything else fixed, with
    the collapse diagnosis of each row (`routing_diagnosis` of the mean over seeds). Writes table8.md and
    results.json to `output_dir`."""
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    data = reproduction_data(dataset, size)
    _, features = prepare(data, backbone_model, tokenizer, cache_dir=cache_dir, data_root=data_root)
    rows = []
    for lambdas in grid:
        weights = dict(zip(("lambda_local", "lambda_global", "lambda_div"), lambdas))
        runs = [train_preset(backbone_model, tokenizer, features, "sparse", data.num_experts, seed, epochs,
                             str(output / "trainer"), training, **weights)[1] for seed in seeds]
        summary = summarize(runs)
        diagnosis = routing_diagnosis(summary["routing_entropy"]["mean"], summary["global_entropy"]["mean"])
        rows.append({"lambdas": list(lambdas), "runs": runs, "summary": summary, "diagnosis": diagnosis})
        print(f"λ = {lambdas}: accuracy {summary['accuracy']['mean']:.3f}, routing H "
              f"{summary['routing_entropy']['mean']:.3f}, global H {summary['global_entropy']['mean']:.3f} -> "
              f"{diagnosis}")
    write_results(output, "table8", table8_markdown(rows, f"{dataset}: {data.description}, K = {data.num_experts}"),
                  {"experiment": "table8", "dataset": dataset, "seeds": list(seeds), "epochs": epochs,
                   "training": training or {},
                   "backbone": backbone, "size": data.size}, rows)
    return rows
