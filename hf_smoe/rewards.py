"""Reward functions for online RL (TRL's `GRPOTrainer`, `RLOOTrainer`, ...): a reward model with one router per user.

TRL calls a reward function with the prompts and the completions separately, so the prompt boundary is known and no
token pattern has to be searched for: standard (plain-text) and conversational prompts both work. Each sample is
routed by its user's router (the dataset's `user` column, passed through by TRL); the backbone and the experts run
once for the whole batch, whatever the mix of users.
"""

import torch

from .features import encode_pair, encode_rendered, padded_batch, scoring_encoding, with_backbone_in
from .runtime import load_checkpoint, model_load_errors
from .errors import InputError
from .modeling.modeling_smoe import mixture_reward
from .personalization import load_router
from .personalization.steering import intervene


class SMoEReward:
    """A TRL `reward_funcs` callable: `reward(prompts=..., completions=..., user=[...], **ignored)` -> one float per
    completion; `score` is the same scoring with its routing and expert rewards (the reward server's). Build it with
    `smoe_reward`. Texts are encoded as the checkpoint was trained (`scoring_encoding`)."""

    def __init__(self, model, tokenizer, routers: dict, user_column: str = "user", max_length: int | None = None):
        encoding = scoring_encoding(model.config, max_length)
        # In 16 bits, SDPA's masked kernel rounds differently from its unmasked one, so a text's reward would move
        # with the padding its batch-mates bring (by up to 14% of the rewards' spread on SmolLM2 in bf16); eager
        # attention gives every row the same result in any batch.
        attention = None if encoding["dtype"] == torch.float32 else "eager"
        self.model = with_backbone_in(model.eval(), encoding["dtype"], attention)
        self.tokenizer, self.routers = tokenizer, routers
        self.user_column, self.max_length = user_column, encoding["max_length"]
        self.__name__ = "smoe_reward"  # the name TRL logs the reward under

    def __call__(self, prompts, completions, **columns) -> list:
        if len(prompts) != len(completions):
            raise InputError(f"completions: {len(completions)} for {len(prompts)} prompts; give one per prompt.")
        users = columns.get(self.user_column) or [None] * len(prompts)
        return self.score(prompts, [completion_text(c) for c in completions], users)["rewards"].tolist()

    def score(self, prompts, responses, users: list | None = None) -> dict:
        """`rewards` (N,), `routing_weights` (N, K) and `expert_rewards` (N, K) of (prompt, response) texts."""
        return self.score_encoded([self.encode(prompt, response) for prompt, response in zip(prompts, responses)],
                                  users)

    def encode(self, prompt, response: str) -> dict:
        """A (prompt, response) in the checkpoint's encoding (`encode_pair`); a policy may stop at once, so an empty
        response is scored on the template's empty assistant turn."""
        return encode_pair(self.tokenizer, prompt, response, self.max_length, allow_empty=True)

    def encode_rendered(self, text: str, prompt_text: str | None = None) -> dict:
        """A conversation rendered into one text by the chat template, encoded as its parts would be
        (`encode_rendered`)."""
        return encode_rendered(self.tokenizer, text, prompt_text, self.max_length)

    def score_encoded(self, encodings: list, users: list | None = None, routers: dict | None = None) -> dict:
        """`score` of encoded texts: one backbone pass, the experts once, each user's router (None: the model's own)
        once on its users' rows. `routers` (default: this reward's) is the set the users are looked up in."""
        users = users or [None] * len(encodings)
        if len(users) != len(encodings):
            raise InputError(f"{self.user_column}: {len(users)} values for {len(encodings)} texts; give one per text "
                             "(None for the default router).")
        routers = dict(self.routers if routers is None else routers)  # users added or removed meanwhile do not count
        unknown = sorted({user for user in users if user is not None and user not in routers}, key=repr)
        if unknown:  # shown as Python values, so that the user 3 and the router name '3' are told apart
            raise InputError(f"{self.user_column}: no router for {unknown[:5]} (routers are given for "
                             f"{sorted(routers, key=repr)}); pass their router files in `routers`, or leave "
                             "the column empty (None) for the default router.")
        return self.score_batch(padded_batch(self.tokenizer, encodings, self.model.head.experts.weight.device), users,
                                routers)

    @torch.no_grad()
    def score_batch(self, batch: dict, users: list, routers: dict) -> dict:
        """`score_encoded` of a padded batch (`padded_batch`) whose users all have a router in `routers`."""
        head = self.model.head
        prompt_embeddings, response_embeddings = self.model.embed(**batch)
        expert_rewards = head.experts(response_embeddings.to(head.experts.weight.dtype))  # (N, K), shared
        routing = per_user_routing(head.router, routers, users, prompt_embeddings.to(head.experts.weight.dtype))
        return {"rewards": mixture_reward(routing, expert_rewards).squeeze(-1), "routing_weights": routing,
                "expert_rewards": expert_rewards}


def per_user_routing(default_router, routers: dict, users: list, prompt_embeddings) -> torch.Tensor:
    """(N, K) routing weights, each sample routed by its user's router (`default_router` for user None); each router
    runs once, on its users' prompts."""
    routing = None
    for user in dict.fromkeys(users):
        rows = torch.tensor([row for row, other in enumerate(users) if other == user], device=prompt_embeddings.device)
        weights = (default_router if user is None else routers[user])(prompt_embeddings[rows])
        if routing is None:
            routing = weights.new_empty(len(users), weights.shape[-1])
        routing[rows] = weights
    return routing


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
                max_length: int | None = None) -> SMoEReward:
    """A reward function for TRL's online trainers (`GRPOTrainer(reward_funcs=smoe_reward(...))`).

    Args:
        model_or_checkpoint: an `SMoERewardModel`, or an hf_smoe checkpoint folder or Hub id.
        routers: {user: router file (`smoe adapt --output`) or router module}; a sample whose `user_column` value
            is None (or a dataset without the column) gets the model's own router. Router files adapted on other
            experts are refused.
        user_column: the dataset column TRL passes through with each sample.
        tokenizer: the model's tokenizer (default: loaded from the checkpoint, or from the model's `name_or_path`).
        max_length: prompt + completion are truncated to this many tokens (the prompt loses its oldest tokens
            first); default: the length the checkpoint was trained with (see `scoring_encoding`).
    """
    if isinstance(model_or_checkpoint, (str, bytes)) or hasattr(model_or_checkpoint, "__fspath__"):
        model, tokenizer = load_checkpoint(model_or_checkpoint, tokenizer)
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


def steer_responses(model, tokenizer, prompt, responses: list, expert: int, weight: float) -> dict:
    """Rewards of `responses` to `prompt` under the router's own weights and with `expert` set to `weight`
    (the routing intervention of `intervene`), scored as `smoe_reward` scores them."""
    if not responses:
        raise InputError("responses: give at least one response to score.")
    if not all(responses):
        raise InputError("response: empty text; give each response to compare.")
    scored = SMoEReward(model, tokenizer, {}).score([prompt] * len(responses), responses)
    steered = intervene(scored["routing_weights"], expert, weight)
    return {"routing_before": scored["routing_weights"][0].tolist(), "routing_after": steered[0].tolist(),
            "rewards_before": scored["rewards"].tolist(),
            "rewards_after": mixture_reward(steered, scored["expert_rewards"]).squeeze(-1).tolist()}
