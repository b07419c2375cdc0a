"""Fig. 2 (attribute steering, §5.2): raising one expert's routing weight flips preferences toward its attribute."""

from pathlib import Path

import torch

from ..evaluation import evaluate_head, head_outputs, plot_flip_rates
from ..features import as_training_features, training_encoding
from ..personalization import STEERING_WEIGHTS, random_target_report, steering_report, target_experts
from ..runtime import DEFAULT_BACKBONE, load_frozen_backbone
from ..training import cached_features, save_checkpoint, train_preset, train_tuned_preset
from .reproduction_datasets import ReproductionData, prepare, reproduction_data, without_criterion
from .results import backbone_state, markdown_header, markdown_row, mean_std_cell, summarize, write_results
from .settings import EPOCHS, ROUTED_PRESETS, SEEDS


def reproduce_fig2(seeds=SEEDS, output_dir="outputs/reproduce/fig2", backbone=DEFAULT_BACKBONE,
                   epochs: float = EPOCHS, training: dict | None = None,
                   cache_dir=None, data_root=None, size: int | None = None,
                   num_experts: int = 10, tune_layers: int = 0) -> dict:
    """Fig. 2 (attribute steering, §5.2) on DSP: train attribute-conditioned (criterion appended), choose each
    domain's target expert from the top-100 validation examples, then on test pairs *without* the criterion set the
    target expert's weight to w and count flips (Eq. 14-18) for vanilla, micro, sparse and sparse with random
    targets. K = 10 is the paper's steering setting (§5.2). Writes fig2.md, results.json, fig2.png and the last
    seed's sparse checkpoint (sparse/). `tune_layers=k` trains each head jointly with a copy of the backbone's top
    k layers (`train_tuned_preset`) and steers it on its own tuned features."""
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    data = reproduction_data("dsp", size, num_experts=num_experts)
    splits, features = prepare(data, backbone_model, tokenizer, cache_dir=cache_dir, data_root=data_root)
    plain_pairs = without_criterion(splits["test"])
    plain_test = cached_features(backbone_model, tokenizer, {"test": plain_pairs}, cache_dir=cache_dir,
                                 max_length=data.max_length)["test"]
    domains = sorted(set(splits["train"]["category"]))
    codes = {split: torch.tensor([domains.index(c) for c in splits[split]["category"]])
             for split in ("validation", "test")}
    runs = {name: [] for name in (*ROUTED_PRESETS, "sparse (random target)")}
    for preset in ROUTED_PRESETS:
        for seed in seeds:
            if tune_layers:
                model, features_of = train_tuned_preset(backbone_model, tokenizer, splits, preset, data.num_experts,
                                                        seed, epochs, str(output / "trainer"), tune_layers, training,
                                                        cache_dir=cache_dir, max_length=data.max_length)
                measured = {part: features_of(splits[part]) for part in ("validation", "test")}
                metrics, steered = evaluate_head(model, measured), features_of(plain_pairs)
            else:
                model, metrics = train_preset(backbone_model, tokenizer, features, preset, data.num_experts, seed,
                                              epochs, str(output / "trainer"), training)
                measured, steered = features, plain_test
            validation = head_outputs(model.head, as_training_features(measured["validation"]))
            targets = target_experts(validation["routing_weights"].cpu(), codes["validation"], len(domains))
            test = {k: v.cpu() for k, v in head_outputs(model.head, as_training_features(steered)).items()}
            outputs = (test["routing_weights"], test["chosen_expert_rewards"], test["rejected_expert_rewards"])
            runs[preset].append(steering_report(*outputs, codes["test"], targets)
                                | {"targets": targets.tolist(), "accuracy": metrics["accuracy"]})
            if preset == "sparse":
                runs["sparse (random target)"].append(random_target_report(
                    *outputs, codes["test"], data.num_experts, len(domains), seed=seed))
                if seed == seeds[-1]:
                    # for `smoe steer`
                    save_checkpoint(model, tokenizer, output / "sparse", training_encoding(data.max_length))
    summary = {name: summarize_steering(reports) for name, reports in runs.items()}
    plot_flip_rates(output / "fig2.png", STEERING_WEIGHTS,
                    {name: ([s["flip_rate_by_weight"][w]["mean"] for w in STEERING_WEIGHTS],
                            [s["undesired_flip_rate_by_weight"][w]["mean"] for w in STEERING_WEIGHTS])
                     for name, s in summary.items()},
                    f"Steering on DSP test prompts without the criterion (K = {data.num_experts})")
    write_results(output, "fig2", fig2_markdown(summary, data, len(seeds), tune_layers),
                  {"experiment": "fig2", "seeds": list(seeds), "epochs": epochs,
                   "training": training or {}, "backbone": backbone,
                   "size": data.size, "num_experts": data.num_experts, "tune_layers": tune_layers},
                  {"runs": runs, "summary": summary, "domains": domains})
    return summary


def summarize_steering(reports: list) -> dict:
    """Mean ± std over seeds of the flip rates, overall and per weight."""
    summary = summarize(reports)
    for key in ("flip_rate_by_weight", "undesired_flip_rate_by_weight"):
        summary[key] = {w: summarize([{"value": r[key][w]} for r in reports])["value"] for w in STEERING_WEIGHTS}
    return summary


def fig2_markdown(summary: dict, data: ReproductionData, num_seeds: int, tune_layers: int = 0) -> str:
    lines = [f"### Steering on DSP (K = {data.num_experts}; trained with the criterion, tested without; "
             f"{num_seeds} seeds, mean ± std; %; {backbone_state(tune_layers)})", "",
             *markdown_header("method", *(f"FR w={w:g}" for w in STEERING_WEIGHTS), "flip rate (avg)",
                              "undesired flip rate (avg)", "accuracy with the criterion")]
    for name, s in summary.items():
        cells = [mean_std_cell(s["flip_rate_by_weight"], w, 100) for w in STEERING_WEIGHTS]
        cells += [mean_std_cell(s, key, 100) for key in ("flip_rate", "undesired_flip_rate", "accuracy")]
        lines.append(markdown_row(name, *cells))
    return "\n".join(lines) + "\n"
