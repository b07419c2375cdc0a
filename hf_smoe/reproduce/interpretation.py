"""Table 4 and Fig. 6 (interpretability, §6.1 and App. B): how faithfully a describer's one-line description of
each expert predicts where the router sends a prompt, judged by a second model.

"general" is the personalization experiments' mixture in the paper's real-world setting; "dsp" is Table 1's DSP with
the criterion (the domain is visible in the prompt, so descriptions have something to find), K = 5.
"""

from pathlib import Path

import torch

from ..errors import InputError
from ..evaluation import plot_interpretability_vs_experts
from ..interpret import (ReadingSettings, distinct_prompts_and_categories, expert_table_markdown, fidelity_means,
                         interpret_head, judge_agreement, judge_check_markdown, load_describer_and_judge,
                         routing_by_prompt, score_descriptions)
from ..metrics import expert_category_labels
from ..runtime import DEFAULT_BACKBONE, load_frozen_backbone
from ..training import train_preset
from .reproduction_datasets import GENERAL_SIZES, general_data, prepare, reproduction_data
from .results import markdown_header, markdown_row, mean_std_cell, summarize, write_results
from .settings import COMPARED_PRESETS, EPOCHS, REAL_WORLD_EXPERTS, REAL_WORLD_SPARSE, SEEDS

INTERPRETATION_DATASETS = ("general", "dsp")
TABLE4_ROWS = ("single", "vanilla", "micro", "random", "sparse")
# Hand-written one-line descriptions of the DSP domains, in the paper's style, to measure the judge itself.
DSP_DESCRIPTIONS = {"academy": "asks for a response in an academic, scholarly style",
                    "business": "asks for a response in a professional business style",
                    "entertainment": "asks for a response in an entertaining, humorous style",
                    "literature": "asks for a response in a literary, artistic style"}
TABLE4_COLUMNS = (("accuracy", "accuracy", 100), ("description_fidelity", "description fidelity", 1),
                  ("fidelity_probability", "fidelity on P(YES)", 1),
                  ("expert_specialization", "expert specialization", 100),
                  ("describing_rate", "descriptions that describe", 100),
                  ("oracle_description_fidelity", "fidelity, hand-written domain descriptions", 1),
                  ("oracle_fidelity_probability", "the same on P(YES)", 1))
FIG6_COLUMNS = TABLE4_COLUMNS[:5]
INTERPRETATION_METRICS = tuple(key for key, _, _ in FIG6_COLUMNS)  # what each interpreted head reports
PAPER_TABLE4 = {"single": (83.52, None, None), "vanilla": (84.82, 0.29, 0.09), "micro": (84.68, 0.15, 0.04),
                "random": (None, 0.01, -0.04), "sparse": (83.78, 0.38, 15.13)}  # accuracy, fidelity, specialization
FIG6_EXPERTS = (10, 20, 30, 40, 50)


def interpretation_setting(name: str, backbone, tokenizer, *, cache_dir=None, data_root=None,
                           general_sizes: tuple = GENERAL_SIZES, dsp_queries: int | None = None):
    """(splits, features, K, sparse config overrides) of one Table 4 dataset."""
    if name == "general":
        splits, features = general_data(backbone, tokenizer, cache_dir=cache_dir, data_root=data_root,
                                        sizes=general_sizes)
        return splits, features, REAL_WORLD_EXPERTS, REAL_WORLD_SPARSE
    if name == "dsp":
        data = reproduction_data("dsp", dsp_queries)
        splits, features = prepare(data, backbone, tokenizer, cache_dir=cache_dir, data_root=data_root)
        return splits, features, data.num_experts, {}
    raise InputError(f"datasets: unknown interpretation dataset {name!r}; choose from {INTERPRETATION_DATASETS}.")


def with_prompts(splits, features, names=("validation", "test")) -> list:
    """The features of `names` with their pairs' `prompt` column (what `interpret_head` reads)."""
    return [features[name].add_column("prompt", list(splits[name]["prompt"])) for name in names]


def oracle_fidelity(head, describing, measuring, judge, descriptions: dict, seed: int = 0,
                    settings: ReadingSettings = ReadingSettings()) -> dict:
    """Description fidelity with a perfect describer, on the YES/NO answers and on P(YES): each expert is described
    by `descriptions[c]`, c its category label (the majority category of its 50 top describing prompts, App. A), and
    judged as `settings` say (calibrated, at thresholds chosen on the describing prompts). What the routing's
    interpretability is through this judge once the describer is out of the way."""
    names = sorted(descriptions)
    routing, texts = routing_by_prompt(head, describing)
    _, categories = distinct_prompts_and_categories(describing)
    categories = torch.tensor([names.index(category) for category in categories])
    labels = expert_category_labels(routing, categories, len(names)).tolist()
    scores = score_descriptions(judge, [descriptions[names[label]] for label in labels],
                                *routing_by_prompt(head, measuring), seed, settings.per_stratum,
                                settings.judge_prompt, (routing, texts) if settings.calibrate_threshold else None)
    return {f"oracle_{key}": value for key, value in fidelity_means(scores).items()}


def reproduce_table4(datasets=INTERPRETATION_DATASETS, seeds=SEEDS, generator: str = "local",
                     generator_model=None, judge=None, judge_model=None, output_dir="outputs/reproduce/table4",
                     backbone=DEFAULT_BACKBONE, epochs: float = EPOCHS, training: dict | None = None,
                     cache_dir=None, data_root=None, generation_cache=None,
                     settings: ReadingSettings = ReadingSettings(), general_sizes: tuple = GENERAL_SIZES,
                     dsp_queries: int | None = None, num_experts: int | None = None) -> dict:
    """Table 4 (§6.1): accuracy, description fidelity and top-10% expert specialization of single / vanilla / MiCRo /
    sparse and the random baseline (sparse's router, the describer shown shuffled prompts), mean ± std over `seeds`;
    experts are described from validation prompts and measured on test prompts. On DSP the judge itself is measured
    too (`judge_agreement` with the domains' hand-written descriptions). How experts are described and judged is
    `settings`, recorded with the results. Writes table4.md and results.json."""
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    describer, judging = load_describer_and_judge(generator, generator_model, judge, judge_model, generation_cache)
    record = {}
    for name in datasets:
        splits, features, default_experts, overrides = interpretation_setting(
            name, backbone_model, tokenizer, cache_dir=cache_dir, data_root=data_root, general_sizes=general_sizes,
            dsp_queries=dsp_queries)
        describing, measuring = with_prompts(splits, features)
        experts = num_experts or default_experts
        runs = {row: [] for row in TABLE4_ROWS}
        for seed in seeds:
            for preset in COMPARED_PRESETS:
                model, metrics = train_preset(backbone_model, tokenizer, features, preset, experts, seed, epochs,
                                              str(output / "trainer"), training,
                                              **(overrides if preset == "sparse" else {}))
                if preset == "single":
                    runs["single"].append({"accuracy": metrics["accuracy"]})
                    continue
                result = interpret_head(model.head, describing, measuring, describer, judging, seed=seed,
                                        random_baseline=preset == "sparse", settings=settings)
                runs[preset].append({key: result[key] for key in INTERPRETATION_METRICS} | {"interpretation": result})
                if name == "dsp":  # the describer removed: each expert gets its domain's hand-written line
                    runs[preset][-1].update(oracle_fidelity(model.head, describing, measuring, judging,
                                                            DSP_DESCRIPTIONS, seed, settings))
                if preset == "sparse":
                    runs["random"].append({key: result["random_baseline"][key] for key in
                                           ("description_fidelity", "fidelity_probability",
                                            "expert_specialization", "describing_rate")})
                print(f"{name} seed {seed}: {preset:<8} fidelity {result['description_fidelity']:.3f}")
        record[name] = {"num_experts": experts, "config_overrides": overrides, "runs": runs,
                        "summary": {row: summarize(r) for row, r in runs.items()},
                        "pairs": "/".join(str(len(s)) for s in splits.values())}
        if name == "dsp":
            calibration = distinct_prompts_and_categories(describing) if settings.calibrate_threshold else None
            record[name]["judge_check"] = judge_agreement(judging, *distinct_prompts_and_categories(measuring),
                                                          DSP_DESCRIPTIONS, settings.judge_prompt, calibration)
    write_results(output, "table4", table4_markdown(record, len(seeds), describer.identity, judging.identity,
                                                    settings),
                  {"experiment": "table4", "datasets": list(datasets), "seeds": list(seeds), "epochs": epochs,
                   "training": training or {},
                   "backbone": backbone, "generator": generator, "generator_model": generator_model, "judge": judge,
                   "judge_model": judge_model, "reading": settings.to_dict(),
                   "describer": describer.identity, "judge_identity": judging.identity,
                   "general_sizes": list(general_sizes), "dsp_queries": dsp_queries, "num_experts": num_experts},
                  record)
    return record


def table4_markdown(record: dict, num_seeds: int, describer: str, judge: str, settings: ReadingSettings) -> str:
    lines = [f"Describer: `{describer}`; judge: `{judge}`; {settings_line(settings)}.", ""]
    for name, result in record.items():
        lines += [f"### {name}: K = {result['num_experts']}, {result['pairs']} pairs (train/validation/test), "
                  f"{num_seeds} seed(s), mean ± std; accuracy and specialization in %", "",
                  *markdown_header("method", *(label for _, label, _ in TABLE4_COLUMNS), "paper (700K, K = 20)")]
        for row in TABLE4_ROWS:
            cells = [mean_std_cell(result["summary"][row], key, scale) for key, _, scale in TABLE4_COLUMNS]
            paper = " / ".join("-" if value is None else f"{value:g}" for value in PAPER_TABLE4[row])
            lines.append(markdown_row(row, *cells, paper))
        last = result["runs"]["sparse"][-1]["interpretation"]
        lines += ["", "Sparse experts of the last seed:", "", expert_table_markdown(last)]
        if "judge_check" in result:
            lines += judge_check_markdown(result["judge_check"])
    return "\n".join(lines) + "\n"


def settings_line(settings: ReadingSettings) -> str:
    """How experts were read, in words, for the head of a results table."""
    return (f"describer prompt: {settings.describer_prompt}, judge prompt: {settings.judge_prompt}, YES threshold: "
            f"{'calibrated on the describing prompts' if settings.calibrate_threshold else '0.5'}, "
            f"{settings.candidates} candidate description(s) per expert, "
            f"{settings.per_stratum} + {settings.per_stratum} prompts judged per expert")


def reproduce_fig6(k_values=FIG6_EXPERTS, seeds=(0,), generator: str = "local", generator_model=None, judge=None,
                   judge_model=None, output_dir="outputs/reproduce/fig6", backbone=DEFAULT_BACKBONE,
                   epochs: float = EPOCHS, training: dict | None = None,
                   cache_dir=None, data_root=None, generation_cache=None,
                   settings: ReadingSettings = ReadingSettings(), general_sizes: tuple = GENERAL_SIZES) -> dict:
    """Fig. 6 (App. B): the sparse model on the general mixture (λ_gb = 1.0) for each K, its description fidelity
    and top-10% expert specialization against K, experts described and judged as `settings` say.
    Writes fig6.md, fig6.png and results.json."""
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    describer, judging = load_describer_and_judge(generator, generator_model, judge, judge_model, generation_cache)
    splits, features, _, overrides = interpretation_setting("general", backbone_model, tokenizer, cache_dir=cache_dir,
                                                            data_root=data_root, general_sizes=general_sizes)
    describing, measuring = with_prompts(splits, features)
    runs = {}
    for num_experts in k_values:
        for seed in seeds:
            model, _ = train_preset(backbone_model, tokenizer, features, "sparse", num_experts, seed, epochs,
                                    str(output / "trainer"), training, **overrides)
            result = interpret_head(model.head, describing, measuring, describer, judging, seed=seed,
                                    random_baseline=False, settings=settings)
            runs.setdefault(num_experts, []).append({key: result[key] for key in INTERPRETATION_METRICS})
            print(f"K = {num_experts}, seed {seed}: fidelity {result['description_fidelity']:.3f}")
    summary = {k: summarize(r) for k, r in runs.items()}
    series = {key: ([summary[k][key]["mean"] for k in k_values], [summary[k][key]["std"] for k in k_values])
              for key in ("description_fidelity", "expert_specialization")}
    plot_interpretability_vs_experts(output / "fig6.png", k_values, series["description_fidelity"],
                                     series["expert_specialization"],
                                     f"Sparse MoE on the general mixture: interpretability vs K ({len(seeds)} seed(s))")
    lines = [f"### Interpretability vs the number of experts (sparse, general mixture, {len(seeds)} seed(s); "
             f"describer `{describer.identity}`, judge `{judging.identity}`; {settings_line(settings)})", "",
             *markdown_header("K", *(label for _, label, _ in FIG6_COLUMNS))]
    for k in k_values:
        lines.append(markdown_row(k, *(mean_std_cell(summary[k], key, scale) for key, _, scale in FIG6_COLUMNS)))
    write_results(output, "fig6", "\n".join(lines) + "\n",
                  {"experiment": "fig6", "k_values": list(k_values), "seeds": list(seeds), "epochs": epochs,
                   "training": training or {},
                   "backbone": backbone, "generator": generator, "generator_model": generator_model, "judge": judge,
                   "judge_model": judge_model, "reading": settings.to_dict(),
                   "describer": describer.identity, "judge_identity": judging.identity,
                   "general_sizes": list(general_sizes)},
                  {"runs": runs, "summary": summary})
    return summary
