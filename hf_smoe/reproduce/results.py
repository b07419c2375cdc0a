"""What every reproduction writes: its results beside the exact command, summaries over seeds, and Markdown tables."""

import statistics
from pathlib import Path

from ..runtime import run_command, save_run

# How a routing metric is headed in a results table, and its scale (100: shown in %, as in the paper).
METRIC_COLUMNS = {"accuracy": ("accuracy", 100), "routing_entropy": ("routing H", 1),
                  "global_entropy": ("global H", 1), "expert_correlation": ("expert corr", 1),
                  "category_coverage": ("coverage", 1), "expert_purity": ("purity", 100),
                  "expert_specialization": ("specialization", 100)}


def metric_columns(*keys) -> tuple:
    """(key, label, scale) of each metric in `keys`, in that order."""
    return tuple((key, *METRIC_COLUMNS[key]) for key in keys)


def backbone_state(tune_layers: int) -> str:
    """How a table's heads saw the backbone, for its caption."""
    return f"the backbone's top {tune_layers} layers tuned with each head" if tune_layers else "frozen backbone"


def markdown_row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_header(*labels) -> list:
    """The header line of a Markdown table and the line under it."""
    return [markdown_row(*labels), "|---" * len(labels) + "|"]


def write_results(output: Path, name: str, markdown: str, job: dict, results) -> None:
    """`<name>.md` headed by the exact command, and results.json (command, job, versions, every run)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.md").write_text(f"Command: `{run_command()}`\n\n{markdown}")
    save_run(output, job, results)


def summarize(runs: list) -> dict:
    """Mean, sample standard deviation and count over seeds of every numeric metric."""
    summary = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            values = [run[key] for run in runs]
            summary[key] = {"mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return summary


def mean_std_cell(summary: dict, key: str, scale: float) -> str:
    """`mean ± std` of `summary[key]` times `scale` (just the mean for one seed; "-" where it was not measured)."""
    if key not in summary:
        return "-"
    mean, std = summary[key]["mean"] * scale, summary[key]["std"] * scale
    digits = 1 if scale == 100 else 3
    return f"{mean:.{digits}f}" if summary[key]["n"] == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
