"""`evaluate` wrappers of `hf_smoe.metrics`, one folder per metric: `evaluate.load(evaluate_module_path(name))`.

Each folder holds `<name>/<name>.py` (the file name must equal the folder name for `evaluate.load` of a local
folder): one `evaluate.Metric` subclass built by `common.metric_base` over the `hf_smoe.metrics` function. The
folders are plain data, not packages, and load offline.
"""

from pathlib import Path

MODULE_NAMES = ("pairwise_accuracy", "routing_entropy", "global_entropy", "expert_correlation", "category_coverage",
                "expert_purity", "expert_specialization", "flip_rate", "undesired_flip_rate",
                "description_fidelity")


def evaluate_module_path(name: str) -> str:
    """Folder of the `evaluate` module `name`, for `evaluate.load(evaluate_module_path(name))`."""
    if name not in MODULE_NAMES:
        raise ValueError(f"unknown evaluate module {name!r}; known: {', '.join(MODULE_NAMES)}")
    return str(Path(__file__).resolve().parent / name)


__all__ = ["MODULE_NAMES", "evaluate_module_path"]
