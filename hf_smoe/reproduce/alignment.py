"""Personalized alignment (App. I, Table 14): GRPO post-training of a policy with a reward model, and the win rate of
one policy's answers over another's, judged by reward models that are not the one optimised.

Needs TRL (`pip install hf-smoe[trl]`).
"""

import torch
from datasets import Dataset

from ..evaluation import head_outputs, mixture_rewards
from ..features import as_training_features
from ..interpret import LocalGenerator


def grpo_policy(policy, reward, prompts: list, output_dir, *, steps: int, seed: int, learning_rate: float,
                max_completion_length: int, rollouts: int = 4, batch_size: int = 8) -> dict:
    """Trains `policy` (a causal-LM folder or Hub id) with TRL's GRPO on `prompts` (user messages) for `steps`
    optimisation steps of `batch_size` completions (`batch_size / rollouts` prompts, `rollouts` samples each, the
    paper's App. I shape), saves it to `output_dir` and returns the logged mean reward per step."""
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": prompt}] for prompt in prompts]})
    args = GRPOConfig(output_dir=str(output_dir), per_device_train_batch_size=batch_size, num_generations=rollouts,
                      max_completion_length=max_completion_length, max_steps=steps, learning_rate=learning_rate,
                      seed=seed, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                      use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.train()
    trainer.save_model(str(output_dir))
    return {"rewards": [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]}


def answers(policy_dir, prompts: list, max_new_tokens: int) -> list:
    """Greedy answers of a policy to `prompts` (batched; deterministic, so the comparison has no sampling noise)."""
    return LocalGenerator(str(policy_dir)).generate(prompts, max_new_tokens=max_new_tokens)


def judge_margins(judge, cache, prompts: list, first: list, second: list) -> torch.Tensor:
    """r(x, first) - r(x, second) under `judge` (a reward model's head) for each prompt, from the embedding cache.
    An empty answer loses to a non-empty one (it shows no attribute and no quality; margin -inf or +inf), two empty
    answers tie."""
    margins = torch.zeros(len(prompts))
    scored = [row for row in range(len(prompts)) if first[row].strip() and second[row].strip()]
    if scored:
        pairs = Dataset.from_dict({"prompt": [[{"role": "user", "content": prompts[row]}] for row in scored],
                                   "chosen": [first[row] for row in scored],
                                   "rejected": [second[row] for row in scored]})
        chosen, rejected = mixture_rewards(head_outputs(judge.head, as_training_features(cache.pair_features(pairs))))
        margins[scored] = (chosen - rejected).cpu()
    for row in sorted(set(range(len(prompts))) - set(scored)):
        first_empty, second_empty = not first[row].strip(), not second[row].strip()
        margins[row] = 0.0 if first_empty == second_empty else float("-inf") if first_empty else float("inf")
    return margins


def win_rates(margins: torch.Tensor) -> dict:
    """The share of prompts each side wins (margin > 0: the first) and ties, as the paper's two rows report."""
    return {"first": (margins > 0).float().mean().item(), "second": (margins < 0).float().mean().item(),
            "ties": (margins == 0).float().mean().item()}
