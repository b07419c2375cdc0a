"""Table 5 / Fig. 8 / Table 13 (personalization, §6.2 and App. H): a model trained on the general mixture, its
router adapted to each DSP domain or simulated user from n pairs."""

import statistics
from pathlib import Path

import torch
from datasets import Dataset

from ..data import DSP_CRITERIA, dirichlet_users
from ..evaluation import head_outputs, plot_gains
from ..features import as_training_features, training_encoding
from ..personalization import adapt_router, expert_rewards_of, routed_accuracy
from ..runtime import DEFAULT_BACKBONE, load_frozen_backbone
from ..training import cached_features, save_checkpoint, train_preset, train_tuned_preset
from .reproduction_datasets import DSP_MAX_LENGTH, DSP_QUERIES, GENERAL_SIZES, dsp_targets, general_data
from .results import backbone_state, markdown_header, markdown_row, write_results
from .settings import EPOCHS, REAL_WORLD_EXPERTS, REAL_WORLD_SPARSE, SEEDS

# Table 5 rows: (row name, preset trained on the general mixture, adaptation method (None = not adapted), config
# overrides), in the paper's real-world setting.
PERSONALIZATION_ROWS = (("single", "single", None, {}), ("HyRe", "static", "hyre", {}),
                        ("vanilla", "vanilla", "hedge", {}), ("micro", "micro", "hedge", {}),
                        ("sparse", "sparse", "hedge", REAL_WORLD_SPARSE))


def personalization_data(backbone, tokenizer, *, cache_dir=None, data_root=None, dsp_queries: int = DSP_QUERIES,
                         general_sizes: tuple = GENERAL_SIZES, users: dict | None = None):
    """(splits, features) of the general training mixture (split by prompt), and (pairs, features) of DSP without
    the criterion, split by query: adaptation pairs are drawn from the train + validation queries, accuracy is
    measured on the test queries. With `users`, the DSP pairs are relabelled by each user (`dsp_user_pairs`)."""
    general, general_features = general_data(backbone, tokenizer, cache_dir=cache_dir, data_root=data_root,
                                             sizes=general_sizes)
    targets = dsp_targets(dsp_queries, data_root)
    if users:
        targets = {name: dsp_user_pairs(split, users) for name, split in targets.items()}
    return (general, general_features, targets, cached_features(backbone, tokenizer, targets, cache_dir=cache_dir,
                                                                max_length=DSP_MAX_LENGTH))


def dsp_user_pairs(pairs, users: dict):
    """DSP pairs (criterion removed) relabelled by simulated users (the Table 13 analogue): a user with weights w over
    the domains scores the response written for domain d by w_d and the `normal` one by 0, and prefers the higher
    score; ties are dropped, each unordered response pair of a query is kept once, category = user = the user."""
    domain_of = {(query, chosen): domain for query, chosen, domain in
                 zip(pairs["query"], pairs["chosen"], pairs["category"])}
    rows, seen = [], set()
    for pair in pairs:
        key = (pair["query"], frozenset((pair["chosen"], pair["rejected"])))
        if key in seen:
            continue
        seen.add(key)
        for user, weights in users.items():
            scores = [weights.get(domain_of.get((pair["query"], pair[side])), 0.0) for side in ("chosen", "rejected")]
            if scores[0] != scores[1]:
                chosen, rejected = ((pair["chosen"], pair["rejected"]) if scores[0] > scores[1]
                                    else (pair["rejected"], pair["chosen"]))
                rows.append({**pair, "chosen": chosen, "rejected": rejected, "category": user, "user": user})
    return Dataset.from_list(rows, features=pairs.features)


def adapt_per_domain(model, method, targets: dict, n_values, adaptation_sets: int) -> dict:
    """domain -> n -> {"before", "after" (mean over adaptation sets), "weight_shift" (K,)}, plus domain ->
    "expert_accuracy" (each expert alone on the domain's test pairs: the ceiling a routing can reach by picking one
    expert). Each adaptation set is n pairs of the domain drawn (seeded) from the pool; accuracy is measured on all
    test pairs of the domain."""
    results = {}
    for domain in sorted(set(targets["test"]["category"])):
        pool = targets["pool"].filter(lambda pair: pair["category"] == domain)
        held_out = expert_rewards_of(model.head, targets["test"].filter(lambda pair: pair["category"] == domain))
        before, routing_before = routed_accuracy(model.head.router, *held_out)
        results[domain] = {"expert_accuracy": (held_out[1] > held_out[2]).float().mean(0).tolist()}
        for n in n_values:
            afters, shifts = [], []
            for draw in range(adaptation_sets):
                router = (adapt_router(model, pool.shuffle(seed=draw).select(range(n)), method, seed=draw)
                          if method else model.head.router)
                after, routing_after = routed_accuracy(router, *held_out)
                afters.append(after)
                shifts.append(routing_after - routing_before)
            results[domain][n] = {"before": before, "after": statistics.fmean(afters),
                                  "weight_shift": torch.stack(shifts).mean(0).tolist()}
    return results


def reproduce_personalization(n_values=(50,), seeds=SEEDS, adaptation_sets: int = 3,
                              num_experts: int = REAL_WORLD_EXPERTS,
                              output_dir="outputs/reproduce/table5", backbone=DEFAULT_BACKBONE, epochs: float = EPOCHS,
                              training: dict | None = None,
                              cache_dir=None, data_root=None, dsp_queries: int = DSP_QUERIES,
                              general_sizes: tuple = GENERAL_SIZES, num_users: int | None = None,
                              alpha: float = 0.3, tune_layers: int = 0) -> dict:
    """Table 5 / 12 (n = 50) and Fig. 8 (several n): train every row on the general mixture, adapt its router to
    each DSP domain (criterion removed) from n pairs, 3 sampled adaptation sets, and report accuracy before/after.
    With `num_users`, Table 13's analogue: users drawn from Dirichlet(alpha) over the DSP domains replace the
    domains (App. H). `tune_layers=k` trains each row's head jointly with a copy of the backbone's top k layers
    (`train_tuned_preset`), and adapts it on its own tuned features of the DSP pairs."""
    output = Path(output_dir)
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    users = dirichlet_users(sorted(DSP_CRITERIA), num_users, alpha=alpha) if num_users else None
    general_splits, general, target_pairs, targets = personalization_data(
        backbone_model, tokenizer, cache_dir=cache_dir, data_root=data_root, dsp_queries=dsp_queries,
        general_sizes=general_sizes, users=users)
    rows = {}
    for name, preset, method, overrides in PERSONALIZATION_ROWS:
        per_seed = []
        for seed in seeds:
            if tune_layers:
                model, features_of = train_tuned_preset(
                    backbone_model, tokenizer, general_splits, preset, num_experts, seed, epochs,
                    str(output / "trainer"), tune_layers, training, cache_dir=cache_dir, max_length=DSP_MAX_LENGTH,
                    **overrides)
                validation = features_of(general_splits["validation"])
                adapted_on = {part: features_of(pairs) for part, pairs in target_pairs.items()}
            else:
                model, _ = train_preset(backbone_model, tokenizer, general, preset, num_experts, seed, epochs,
                                        str(output / "trainer"), training, **overrides)
                validation, adapted_on = general["validation"], targets
            per_seed.append(adapt_per_domain(model, method, adapted_on, n_values, adaptation_sets))
        rows[name] = per_seed
        if name == "sparse":
            upweighted = most_upweighted_experts(model, per_seed[-1], validation,
                                                 general_splits["validation"]["prompt"], max(n_values))
            # for `smoe adapt` on data of one's own
            save_checkpoint(model, tokenizer, output / "sparse", training_encoding(DSP_MAX_LENGTH))
        print(f"{name}: adapted to {len(per_seed[0])} domains")
    summary = personalization_summary(rows, n_values)
    markdown = personalization_markdown(summary, n_values, len(seeds), adaptation_sets, num_experts, tune_layers)
    markdown += upweighted_markdown(upweighted, max(n_values))
    if len(n_values) > 1:
        plot_gains(output / "fig8.png", n_values,
                   {name: [summary[name][n]["overall"]["change"] for n in n_values] for name in summary},
                   "Personalization gain on DSP domains vs adaptation set size")
    name = "table13" if users else "table5" if len(n_values) == 1 else "fig8"
    if users:
        markdown += "\nUsers (Dirichlet(%g) weights over the domains): " % alpha + "; ".join(
            f"{user} " + ", ".join(f"{d} {w:.2f}" for d, w in weights.items()) for user, weights in users.items())
        markdown += "\n"
    write_results(output, name, markdown,
                  {"experiment": name, "n_values": list(n_values), "seeds": list(seeds),
                   "adaptation_sets": adaptation_sets, "num_experts": num_experts, "epochs": epochs,
                   "training": training or {},
                   "config_overrides": {name: overrides for name, _, _, overrides in PERSONALIZATION_ROWS},
                   "backbone": backbone, "dsp_queries": dsp_queries, "general_sizes": list(general_sizes),
                   "users": users, "tune_layers": tune_layers},
                  {"summary": summary, "runs": rows, "most_upweighted": upweighted})
    return summary


def personalization_summary(rows: dict, n_values) -> dict:
    """row -> n -> domain (and "overall" = mean over domains) -> before / after / change, means over seeds."""
    summary = {}
    for name, per_seed in rows.items():
        summary[name] = {}
        for n in n_values:
            table = {domain: {key: statistics.fmean(run[domain][n][key] for run in per_seed)
                              for key in ("before", "after")} for domain in per_seed[0]}
            for domain in per_seed[0]:
                table[domain]["best_expert"] = statistics.fmean(max(run[domain]["expert_accuracy"])
                                                                for run in per_seed)
            table["overall"] = {key: statistics.fmean(v[key] for v in table.values())
                                for key in ("before", "after", "best_expert")}
            for values in table.values():
                values["change"] = values["after"] - values["before"]
            summary[name][n] = table
    return summary


def personalization_markdown(summary: dict, n_values, num_seeds: int, adaptation_sets: int, num_experts,
                             tune_layers: int = 0) -> str:
    domains = [d for d in next(iter(summary.values()))[n_values[0]] if d != "overall"]
    lines = []
    for n in n_values:
        lines += [f"### Accuracy (%) on DSP test queries after adapting to each domain or user from n = {n} pairs "
                  f"(change vs. not adapted; K = {num_experts}, {num_seeds} training seed(s) x {adaptation_sets} "
                  f"adaptation sets, {backbone_state(tune_layers)})", "",
                  *markdown_header("method", *domains, "overall")]
        for name, by_n in summary.items():
            lines.append(markdown_row(name, *(f"{100 * by_n[n][d]['after']:.1f} ({100 * by_n[n][d]['change']:+.1f})"
                                              for d in [*domains, "overall"])))
        lines.append("")
    lines += ["Best single expert of each model on each domain's test pairs (the most a routing that picks one expert "
              "can reach; %):", "", *markdown_header("method", *domains, "overall")]
    for name, by_n in summary.items():
        lines.append(markdown_row(name, *(f"{100 * by_n[n_values[0]][d]['best_expert']:.1f}"
                                          for d in [*domains, "overall"])))
    return "\n".join(lines) + "\n\n"


def most_upweighted_experts(model, results: dict, validation, validation_prompts, n: int, top: int = 3) -> dict:
    """Table 6 analogue: per domain (or user), the expert whose mean routing weight rose most in adaptation, with the
    general-mixture validation prompts that route to it most (its descriptions until interpretation exists)."""
    routing = head_outputs(model.head, as_training_features(validation))["routing_weights"].cpu()
    prompts = [prompt[-1]["content"] for prompt in validation_prompts]
    upweighted = {}
    for domain, by_n in results.items():
        shift = torch.tensor(by_n[n]["weight_shift"])
        expert = int(shift.argmax())
        order = torch.sort(routing[:, expert], descending=True, stable=True).indices.tolist()
        unique = list(dict.fromkeys(prompts[i] for i in order))[:top]
        upweighted[domain] = {"expert": expert, "shift": shift[expert].item(), "top_prompts": unique}
    return upweighted


def upweighted_markdown(upweighted: dict, n: int) -> str:
    lines = [f"### Most upweighted expert per domain or user (sparse, n = {n}; Table 6 analogue)", "",
             *markdown_header("domain", "expert", "weight shift", "its top general-mixture prompts")]
    for domain, entry in upweighted.items():
        prompts = " / ".join(p[:60].replace("|", " ").replace("\n", " ") for p in entry["top_prompts"])
        lines.append(f"| {domain} | E{entry['expert']} | {entry['shift']:+.3f} | {prompts} |")
    return "\n".join(lines) + "\n"
