"""Figures written next to experiment results (PNG, headless)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_routing_heatmap(path, title: str, sample_prompts: list, sample_categories: list, sample_weights,
                         category_means: dict, expert_labels: dict) -> Path:
    """Routing weights as heatmaps, like the paper's Table 2 and MiCRo's Fig. 3.

    Args:
        sample_prompts, sample_categories, sample_weights: a few test prompts (rows), their categories and their
            (n, K) routing weights under the first model of `category_means`.
        category_means: model name -> (categories, (C, K) mean routing weight of each category's test prompts).
        expert_labels: model name -> the category label of each expert (from validation).
    """
    panels = len(category_means) + 1
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 2, 0.32 * len(sample_prompts) + 2.2),
                                gridspec_kw={"width_ratios": [2.2] + [1] * (panels - 1)})
    first = next(iter(category_means))
    rows = [f"[{category}] {prompt[:48]}{'…' if len(prompt) > 48 else ''}"
            for prompt, category in zip(sample_prompts, sample_categories)]
    _heatmap(axes[0], sample_weights, rows, expert_labels[first], f"{first}: sample test prompts")
    for axis, (name, (categories, means)) in zip(axes[1:], category_means.items()):
        _heatmap(axis, means, categories, expert_labels[name], f"{name}: mean per category")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _heatmap(axis, weights, row_labels, expert_labels, title) -> None:
    weights = [[float(value) for value in row] for row in weights]
    axis.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(expert_labels)), [f"E{k} ({label})" for k, label in enumerate(expert_labels)],
                    fontsize=7, rotation=40, ha="right", rotation_mode="anchor")
    axis.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    for row, values in enumerate(weights):
        for column, value in enumerate(values):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                      color="white" if value > 0.6 else "black")
    axis.set_title(title, fontsize=9)


def plot_weight_shift(path, shift, title: str, expert_labels=None) -> Path:
    """A bar chart of each expert's mean routing weight after adaptation minus before."""
    shift = [float(value) for value in shift]
    labels = expert_labels or [f"E{k}" for k in range(len(shift))]
    figure, axis = plt.subplots(figsize=(min(max(4.0, 0.7 * len(shift) + 2), 10.0), 3.6))  # 20 experts fit
    axis.bar(range(len(shift)), shift, color=["tab:blue" if value >= 0 else "tab:red" for value in shift])
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(shift)), labels, fontsize=8)
    axis.set_ylabel("mean routing weight: after - before")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_flip_rates(path, weights, curves: dict, title: str) -> Path:
    """Flip rate and undesired flip rate vs the target expert's weight w, one line per method (the paper's Fig. 2
    and its App. E companion). `curves`: method -> (flip rates, undesired flip rates), one value per weight."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, (flips, undesired) in curves.items():
        axes[0].plot(weights, [100 * v for v in flips], marker="o", label=name)
        axes[1].plot(weights, [100 * v for v in undesired], marker="o", label=name)
    for axis, label in zip(axes, ("flip rate (%)", "undesired flip rate (%)")):
        axis.set_xlabel("target expert weight w")
        axis.set_ylabel(label)
        axis.set_xticks(list(weights))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_gains(path, n_values, gains: dict, title: str) -> Path:
    """Accuracy change after adaptation vs the number of adaptation pairs n, one line per method (paper Fig. 8)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    for name, values in gains.items():
        axis.plot(list(n_values), [100 * v for v in values], marker="o", label=name)
    axis.set_xscale("log")
    axis.set_xticks(list(n_values), [str(n) for n in n_values])
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel("adaptation pairs n")
    axis.set_ylabel("accuracy change (points)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_interpretability_vs_experts(path, k_values, fidelity, specialization, title: str) -> Path:
    """Description fidelity and expert specialization against the number of experts K (the paper's Fig. 6);
    `fidelity`, `specialization`: (means, stds) over seeds, one value per K."""
    figure, axes = plt.subplots(1, 2, figsize=(8.5, 3.2))
    for axis, (means, stds), label in zip(axes, (fidelity, specialization),
                                          ("description fidelity", "expert specialization (%)")):
        scale = 100 if "%" in label else 1
        axis.errorbar(list(k_values), [scale * m for m in means], yerr=[scale * s for s in stds], marker="o",
                      capsize=3)
        axis.set_xlabel("number of experts K")
        axis.set_ylabel(label)
        axis.set_xticks(list(k_values))
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)
