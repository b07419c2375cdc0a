"""Table 1 (category recovery, §5.1): does the router find the latent categories it is never shown?"""

import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..evaluation import category_probe, evaluate_head, head_outputs, plot_routing_heatmap, preference_probes
from ..features import as_training_features
from ..runtime import DEFAULT_BACKBONE, load_frozen_backbone
from ..training import train_preset, train_tuned_preset
from .reproduction_datasets import DATASETS, prepare, reproduction_data
from .results import (backbone_state, markdown_header, markdown_row, mean_std_cell, metric_columns, summarize,
                      write_results)
from .settings import COMPARED_PRESETS, EPOCHS, SEEDS

TABLE1_COLUMNS = metric_columns("accuracy", "routing_entropy", "global_entropy", "expert_correlation",
                                "category_coverage", "expert_purity", "expert_specialization")


def table1_markdown(record: dict) -> str:
    """One Markdown table per dataset; accuracy, purity and specialization in %, as in the paper."""
    lines = []
    for name, result in record.items():
        data = result["data"]
        lines += [f"### {name}: {data['description']}",
                  f"K = {data['num_experts']}, {result['pairs']} pairs (train/validation/test), max length "
                  f"{data['max_length']}, {len(result['seeds'])} seeds (mean ± std), measured on "
                  f"{result['measured_on']}, {backbone_state(result.get('tune_layers', 0))}", "",
                  *markdown_header("preset", *(label for _, label, _ in TABLE1_COLUMNS))]
        for preset, summary in result["summary"].items():
            cells = [mean_std_cell(summary, key, scale) if preset != "single" or key == "accuracy" else "-"
                     for key, _, scale in TABLE1_COLUMNS]
            lines.append(markdown_row(preset, *cells))
        lines += probes_markdown("the frozen backbone", result["category_probe"], result.get("preference_probes"))
        lines += tuned_probes_markdown(result)
        lines += ["", "Accuracy (%) by category, mean over seeds:", ""]
        categories = sorted(result["runs"]["single"][0]["accuracy_by_category"])
        lines += markdown_header("preset", *categories)
        for preset, runs in result["runs"].items():
            means = [100 * statistics.fmean(run["accuracy_by_category"][c] for run in runs) for c in categories]
            lines.append(markdown_row(preset, *(f"{mean:.1f}" for mean in means)))
        lines.append("")
    return "\n".join(lines)


def tuned_probes_markdown(result: dict) -> list:
    """The probes of the frozen and each preset's tuned features side by side: a category's own preference probe
    (the diagonal), the other categories' probes on it (off the diagonal) and the probe of all pairs, each the
    mean over categories. Own well above other means the preferences stay apart for a router to separate."""
    if not result.get("tuned_probes"):
        return []
    lines = ["", f"Probes of the tuned features (each preset's seed {result['seeds'][0]}; %, mean over categories "
                 "of the validation accuracy):", "",
             *markdown_header("features", "category probe", "own category's preference probe",
                              "other categories' probes", "probe of all pairs")]
    rows = {"frozen": {"category_probe": result["category_probe"], "preference_probes": result["preference_probes"]},
            **{f"tuned with {preset}": probes for preset, probes in result["tuned_probes"].items()}}
    for features, probes in rows.items():
        matrix = probes["preference_probes"]
        categories = [name for name in matrix if name != "all"]
        own = statistics.fmean(matrix[c][c] for c in categories)
        other = statistics.fmean(matrix[t][c] for t in categories for c in categories if t != c)
        every = statistics.fmean(matrix["all"][c] for c in categories)
        lines.append(markdown_row(features, f"{100 * probes['category_probe']['probe_accuracy']:.1f}",
                                  *(f"{100 * value:.1f}" for value in (own, other, every))))
    return lines


def probes_markdown(features: str, probe: dict, preferences: dict | None) -> list:
    """`category_probe` and `preference_probes` of `features` (what they were measured on) as Markdown lines: the
    preference probes one row per training set, one column per validation category."""
    lines = ["", f"Category probe on {features} (linear, on the router's input; train -> validation): accuracy "
                 f"{100 * probe['probe_accuracy']:.1f}% (majority class {100 * probe['majority_rate']:.1f}%)."]
    if not preferences:
        return lines
    categories = list(next(iter(preferences.values())))
    lines += ["", f"Preference probes on {features} (a linear Bradley-Terry head fitted on the train pairs of the "
                  "row's category; accuracy % on each category's validation pairs):", "",
              *markdown_header("trained on", *categories)]
    return lines + [markdown_row(trained_on, *(f"{100 * row[c]:.1f}" for c in categories))
                    for trained_on, row in preferences.items()]


def routing_figure(path, name: str, splits, models: dict, expert_labels: dict, per_category: int = 3):
    """The routing heatmap of `models` (seed 0; preset -> (model, its features)) on test prompts: a few sampled
    prompts under the first model, and every model's mean routing per category."""
    test = splits["test"]
    categories = sorted(set(test["category"]))
    routing = {preset: head_outputs(model.head, as_training_features(features["test"]))["routing_weights"].cpu()
               for preset, (model, features) in models.items()}
    first_rows = {}
    for row, (prompt, category) in enumerate(zip(test["prompt"], test["category"])):
        first_rows.setdefault(category, {}).setdefault(prompt[-1]["content"], row)
    rng = random.Random(0)
    sample = [(category, text, row) for category in categories
              for text, row in rng.sample(sorted(first_rows[category].items()),
                                          min(per_category, len(first_rows[category])))]
    first = next(iter(models))
    rows = [[i for i, c in enumerate(test["category"]) if c == category] for category in categories]
    means = {preset: (categories, [weights[indices].mean(dim=0).tolist() for indices in rows])
             for preset, weights in routing.items()}
    return plot_routing_heatmap(path, f"Routing weights on {name} test prompts (categories never seen in training)",
                                [text for _, text, _ in sample], [c for c, _, _ in sample],
                                routing[first][[row for _, _, row in sample]].tolist(), means, expert_labels)


def without_test(splits: dict) -> dict:
    """Diagnostic splits that never read test: experts labelled on train, measured on validation."""
    return {"train": splits["train"], "validation": splits["train"], "test": splits["validation"]}


def reproduce_table1(datasets=tuple(DATASETS), seeds=SEEDS, output_dir="outputs/reproduce/table1",
                     backbone=DEFAULT_BACKBONE, epochs: float = EPOCHS, training: dict | None = None,
                     cache_dir=None, data_root=None,
                     sizes: dict | None = None, measure_on: str = "test", tune_layers: int = 0) -> dict:
    """Table 1 (category recovery) for `single`, `vanilla`, `micro` and `sparse` on each dataset, mean ± std over
    `seeds`; experts are labelled on the 50 top validation examples and scored on test (App. A). Writes
    table1.md, results.json (with the command) and routing_<dataset>.png to `output_dir`.

    `measure_on="validation"` is for diagnosis (e.g. of the training length) without touching test: experts are
    then labelled on train and every metric is measured on validation.

    `tune_layers=k` trains each head jointly with a copy of the backbone's top k layers under its own objective
    (`train_tuned_preset`), and probes the tuned features of each preset's first seed as the frozen ones are
    probed: does the mixture objective keep the categories' preferences apart where a single head merges them?"""
    if measure_on not in ("test", "validation"):
        raise InputError(f"measure_on: 'test' or 'validation', got {measure_on!r}.")
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    record = {}
    for name in datasets:
        started = time.time()
        data = reproduction_data(name, (sizes or {}).get(name))
        splits, features = prepare(data, backbone_model, tokenizer, cache_dir=cache_dir, data_root=data_root)
        embedded = time.time() - started
        probe, preference = category_probe(features), preference_probes(features)
        view = without_test if measure_on == "validation" else dict
        # tuned heads are measured on features of their own: test pairs are embedded only when test is measured
        measured = ("train", "validation", "test") if measure_on == "test" else ("train", "validation")
        runs, first_models, tuned_probes = {}, {}, {}
        for preset in COMPARED_PRESETS:
            for seed in seeds:
                folder = str(output / "trainer" / name / preset)
                if tune_layers:
                    model, features_of = train_tuned_preset(backbone_model, tokenizer, splits, preset,
                                                            data.num_experts, seed, epochs, folder, tune_layers,
                                                            training, cache_dir=cache_dir,
                                                            max_length=data.max_length)
                    # train features serve the probes (first seed) and, measured on validation, the labelling
                    tuned = {part: features_of(splits[part]) for part in measured
                             if part != "train" or seed == seeds[0] or measure_on == "validation"}
                    metrics = evaluate_head(model, view(tuned))
                    if seed == seeds[0]:  # does the objective keep the categories' directions apart?
                        tuned_probes[preset] = {"category_probe": category_probe(tuned),
                                                "preference_probes": preference_probes(tuned)}
                else:
                    model, metrics = train_preset(backbone_model, tokenizer, view(features), preset, data.num_experts,
                                                  seed, epochs, folder, training)
                runs.setdefault(preset, []).append(metrics)
                if seed == seeds[0] and preset != "single":
                    first_models[preset] = (model, view(tuned) if tune_layers else view(features))
            print(f"{name}: {preset:<8} accuracy {statistics.fmean(r['accuracy'] for r in runs[preset]):.3f}")
        figure = routing_figure(output / f"routing_{name}.png", name, view(splits),
                                dict(reversed(first_models.items())),
                                {preset: runs[preset][0]["expert_categories"] for preset in first_models})
        record[name] = {"data": asdict(data), "pairs": "/".join(str(len(s)) for s in splits.values()),
                        "seeds": list(seeds), "runs": runs, "summary": {p: summarize(r) for p, r in runs.items()},
                        "category_probe": probe, "preference_probes": preference, "measured_on": measure_on,
                        "tune_layers": tune_layers, "tuned_probes": tuned_probes,
                        "seconds": {"embedding": embedded, "total": time.time() - started}, "figure": figure.name}
        print(f"{name}: done in {record[name]['seconds']['total']:.0f} s (embedding {embedded:.0f} s)")
    write_results(output, "table1", table1_markdown(record),
                  {"experiment": "table1", "datasets": list(datasets), "seeds": list(seeds), "epochs": epochs,
                   "training": training or {},
                   "backbone": backbone, "sizes": sizes, "measure_on": measure_on, "tune_layers": tune_layers},
                  record)
    return record
