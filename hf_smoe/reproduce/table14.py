"""Table 14 (personalized alignment, App. I): a policy post-trained with GRPO on a reward model whose router was
adapted to one DSP domain, against one trained on the universal reward model, judged by reward models not optimised."""

import copy
import random
import time
from pathlib import Path

from ..data import DSP_CRITERIA
from ..errors import InputError
from ..features import EmbeddingCache
from ..personalization import adapt_router, expert_rewards_of, routed_accuracy, set_router
from ..rewards import smoe_reward
from ..runtime import DEFAULT_BACKBONE, default_generator_path, load_frozen_backbone
from ..training import train_preset
from .alignment import answers, grpo_policy, judge_margins, win_rates
from .personalization import personalization_data
from .reproduction_datasets import DSP_MAX_LENGTH, DSP_QUERIES, GENERAL_SIZES, dsp_queries_by_pair, dsp_targets
from .results import markdown_header, markdown_row, write_results
from .settings import EPOCHS, REAL_WORLD_EXPERTS, REAL_WORLD_SPARSE

TABLE14_DOMAIN = "entertainment"  # the DSP domain personalization helps most in Table 5 (the paper picks such ones)


def unseen_dsp_queries(excluded, count: int, seed: int = 0, data_root=None) -> list:
    """`count` DSP queries (seeded) outside `excluded`: held-out prompts no model of the run has seen."""
    queries = sorted(set(dsp_queries_by_pair(data_root)) - set(excluded))
    if count > len(queries):
        raise InputError(f"eval_prompts: {count} requested, but DSP has {len(queries)} queries outside the run's.")
    return random.Random(seed).sample(queries, count)


def reproduce_table14(domain: str = TABLE14_DOMAIN, steps: int = 100, seed: int = 0, n: int = 50,
                      eval_prompts: int = 100, output_dir="outputs/reproduce/table14", backbone=DEFAULT_BACKBONE,
                      policy=None, epochs: float = EPOCHS, training: dict | None = None, cache_dir=None, data_root=None,
                      dsp_queries: int = DSP_QUERIES, general_sizes: tuple = GENERAL_SIZES,
                      num_experts: int = REAL_WORLD_EXPERTS, learning_rate: float = 1e-5,
                      max_completion_length: int = 48, max_new_tokens: int = 64) -> dict:
    """Table 14 (App. I): GRPO post-training of `policy` (default: the embedded SmolLM2-135M-Instruct as a causal
    LM) on DSP queries with (a) the universal sparse reward model (Table 5's: general mixture, K = 20) and (b) the
    same model with its router adapted by Hedge to `domain` from `n` pairs. On `eval_prompts` unseen DSP queries,
    the greedy answers of (b) and (a) are compared by two judges that are not the reward optimised: a `single`
    reward model trained on the domain's pool pairs (the target attribute) and one trained on the general mixture
    (overall quality); each judge's own accuracy is reported."""
    output, started = Path(output_dir), time.time()
    policy = str(policy or default_generator_path())
    backbone_model, tokenizer = load_frozen_backbone(backbone)
    _, general, _, targets = personalization_data(backbone_model, tokenizer, cache_dir=cache_dir,
                                                  data_root=data_root, dsp_queries=dsp_queries,
                                                  general_sizes=general_sizes)
    pairs = dsp_targets(dsp_queries, data_root)
    if domain not in set(pairs["test"]["category"]):
        raise InputError(f"domain: {domain!r} is not a DSP domain; choose one of {sorted(DSP_CRITERIA)}.")
    in_domain = {name: features.filter(lambda pair: pair["category"] == domain) for name, features in targets.items()}
    universal, _ = train_preset(backbone_model, tokenizer, general, "sparse", num_experts, seed, epochs,
                                str(output / "trainer"), training, **REAL_WORLD_SPARSE)
    personalized = copy.deepcopy(universal)
    set_router(personalized, adapt_router(universal, in_domain["pool"].shuffle(seed=seed).select(range(n)), "hedge",
                                          seed=seed))
    accuracy = {name: routed_accuracy(model.head.router, *expert_rewards_of(model.head, in_domain["test"]))[0]
                for name, model in (("universal", universal), ("personalized", personalized))}
    judges = {"target": train_preset(backbone_model, tokenizer, {"train": in_domain["pool"], "validation":
                                                                 in_domain["test"], "test": in_domain["test"]},
                                     "single", None, seed, epochs, str(output / "trainer"), training),
              "quality": train_preset(backbone_model, tokenizer, general, "single", None, seed, epochs,
                                      str(output / "trainer"), training)}
    queries = sorted(set(pairs["pool"]["query"]))
    rewards = {}
    for name, model in (("personalized", personalized), ("universal", universal)):
        reward = smoe_reward(model, tokenizer=tokenizer, max_length=DSP_MAX_LENGTH)
        rewards[name] = grpo_policy(policy, reward, queries, output / f"policy_{name}", steps=steps, seed=seed,
                                    learning_rate=learning_rate, max_completion_length=max_completion_length)
        print(f"{name}: GRPO mean reward {rewards[name]['rewards'][0]:.3f} -> {rewards[name]['rewards'][-1]:.3f}")
    held_out = unseen_dsp_queries(set(pairs["pool"]["query"]) | set(pairs["test"]["query"]), eval_prompts, seed,
                                  data_root)
    texts = {name: answers(output / f"policy_{name}", held_out, max_new_tokens) for name in rewards}
    cache = EmbeddingCache(judges["quality"][0], tokenizer, cache_dir=cache_dir, max_length=DSP_MAX_LENGTH)
    margins = {name: judge_margins(judge, cache, held_out, texts["personalized"], texts["universal"])
               for name, (judge, _) in judges.items()}
    record = {"win_rates": {name: win_rates(m) for name, m in margins.items()},
              "judge_accuracy": {name: metrics["accuracy"] for name, (_, metrics) in judges.items()},
              "reward_model_accuracy": accuracy, "grpo_rewards": rewards,
              "answers": [{"prompt": prompt, "personalized": texts["personalized"][row],
                           "universal": texts["universal"][row],
                           **{f"{name}_margin": margins[name][row].item() for name in margins}}
                          for row, prompt in enumerate(held_out)],
              "seconds": time.time() - started}
    write_results(output, "table14", table14_markdown(record, domain, steps, n),
                  {"experiment": "table14", "domain": domain, "steps": steps, "seed": seed, "n": n,
                   "eval_prompts": eval_prompts, "policy": policy, "backbone": backbone, "epochs": epochs,
                   "training": training or {}, "dsp_queries": dsp_queries, "general_sizes": list(general_sizes),
                   "num_experts": num_experts, "learning_rate": learning_rate,
                   "max_completion_length": max_completion_length, "max_new_tokens": max_new_tokens}, record)
    return record


def table14_markdown(record: dict, domain: str, steps: int, n: int) -> str:
    rates, accuracy = record["win_rates"], record["judge_accuracy"]
    lines = [f"### Personalized alignment on DSP {domain} (App. I analogue; GRPO {steps} steps x 8 completions; "
             f"win rates on {len(record['answers'])} unseen queries, %)", "",
             *markdown_header("policy trained with", "win rate, target attribute", "win rate, quality")]
    for label, side in ((f"personalized (Hedge, {n} {domain} pairs)", "first"), ("universal", "second"),
                        ("ties", "ties")):
        lines.append(markdown_row(label, f"{100 * rates['target'][side]:.1f}", f"{100 * rates['quality'][side]:.1f}"))
    universal, personalized = (100 * record["reward_model_accuracy"][name] for name in ("universal", "personalized"))
    lines += ["", f"Judges (not the reward optimised): target attribute = a `single` reward model on the {domain} "
              f"pool pairs, {100 * accuracy['target']:.1f}% on the domain's test pairs; quality = a `single` reward "
              f"model on the general mixture, {100 * accuracy['quality']:.1f}% on its test split. The reward models "
              f"optimised: {universal:.1f}% (universal) and {personalized:.1f}% (personalized) on the {domain} test "
              "pairs."]
    return "\n".join(lines) + "\n"
