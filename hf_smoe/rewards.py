"""Reward functions for online RL (TRL's `GRPOTrainer`, `RLOOTrainer`, ...): a reward model with one router per user.

TRL calls a reward function with the prompts and the completions separately, so the prompt boundary is known and no
token pattern has to be searched for: standard (plain-text) and conversational prompts both work. Each sample is
routed by its user's router (the dataset's `user` column, passed through by TRL); the backbone and the experts run
once for the whole batch, whatever the mix of users.
"""

import torch

from .features import encode_batch
from .runtime import load_checkpoint, model_load_errors
from .errors import InputError
from .modeling.modeling_smoe import mixture_reward
from .personalization import load_router


class SMoEReward:
    """A TRL `reward_funcs` callable: `reward(prompts=..., completions=..., user=[...], **ignored)` -> one float per
    completion. Build it with `smoe_reward`."""

    def __init__(self, model, tokenizer, routers: dict, user_column: str = "user", max_length: int | None = 1024):
        self.model, self.tokenizer, self.routers = model.eval(), tokenizer, routers
        self.user_column, self.max_length = user_column, max_length
        self.__name__ = "smoe_reward"  # the name TRL logs the reward under

    @torch.no_grad()
    def __call__(self, prompts, completions, **columns) -> list:
        if len(prompts) != len(completions):
            raise InputError(f"completions: {len(completions)} for {len(prompts)} prompts; give one per prompt.")
        users = columns.get(self.user_column) or [None] * len(prompts)
        unknown = sorted({str(user) for user in users if user is not None and user not in self.routers})
        if unknown:
            raise InputError(f"{self.user_column}: no router for {unknown[:5]} (routers are given for "
                             f"{sorted(map(str, self.routers))}); pass their router files in `routers`, or leave "
                             "the column empty (None) for the default router.")
        device = self.model.head.experts.weight.device
        batch = encode_batch(self.tokenizer, prompts, [completion_text(c) for c in completions], device,
                             max_length=self.max_length, allow_empty=True)  # a policy may stop at once
        prompt_embeddings, response_embeddings = self.model.embed(**batch)
        head = self.model.head
        prompt_embeddings = prompt_embeddings.to(head.experts.weight.dtype)
        expert_rewards = head.experts(response_embeddings.to(head.experts.weight.dtype))  # (N, K), shared
        return per_user_rewards(head.router, self.routers, users, prompt_embeddings, expert_rewards).tolist()


def per_user_rewards(default_router, routers: dict, users: list, prompt_embeddings, expert_rewards) -> torch.Tensor:
    """(N,) mixture rewards (Eq. 2), each sample routed by its user's router (`default_router` for user None); each
    router runs once, on its users' prompts."""
    routing = torch.empty_like(expert_rewards)
    for user in dict.fromkeys(users):
        rows = torch.tensor([row for row, other in enumerate(users) if other == user], device=routing.device)
        router = default_router if user is None else routers[user]
        routing[rows] = router(prompt_embeddings[rows]).to(routing.dtype)
    return mixture_reward(routing, expert_rewards).squeeze(-1)


def completion_text(completion) -> str:
    """A completion as TRL passes it: text (standard format) or one assistant message in a list (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict) \
            and completion[0].get("role") == "assistant":
        return completion[0].get("content") or ""
    raise InputError("completions: each must be a text or one assistant message ([{'role': 'assistant', 'content': "
                     f"...}}]), got {str(completion)[:80]!r}.")


def smoe_reward(model_or_checkpoint, routers: dict | None = None, user_column: str = "user", tokenizer=None,
                max_length: int | None = 1024) -> SMoEReward:
    """A reward function for TRL's online trainers (`GRPOTrainer(reward_funcs=smoe_reward(...))`).

    Args:
        model_or_checkpoint: an `SMoERewardModel`, or an hf_smoe checkpoint folder or Hub id.
        routers: {user: router file (`smoe adapt --output`) or router module}; a sample whose `user_column` value
            is None (or a dataset without the column) gets the model's own router. Router files adapted on other
            experts are refused.
        user_column: the dataset column TRL passes through with each sample.
        tokenizer: the model's tokenizer (default: loaded from the checkpoint, or from the model's `name_or_path`).
        max_length: prompt + completion are truncated to this many tokens as in training (the prompt loses its
            oldest tokens first).
    """
    if isinstance(model_or_checkpoint, (str, bytes)) or hasattr(model_or_checkpoint, "__fspath__"):
        model, loaded_tokenizer = load_checkpoint(model_or_checkpoint)
        tokenizer = tokenizer or loaded_tokenizer
    else:
        model = model_or_checkpoint
        if tokenizer is None:
            from transformers import AutoTokenizer

            with model_load_errors("tokenizer", model.name_or_path):
                tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    loaded = {user: load_router(router, model) if not isinstance(router, torch.nn.Module) else router.eval()
              for user, router in (routers or {}).items()}
    if None in loaded:
        raise InputError("routers: None is the key of the default router (the model's own); name the user.")
    return SMoEReward(model, tokenizer, loaded, user_column, max_length)
