"""What the reward server serves, apart from HTTP: one checkpoint, scored through `smoe_reward`'s path (the reward of
a text does not depend on who asks or how), one router per user, and learning a user from labeled pairs (the
`smoe adapt` path)."""

import functools
import re
import threading
from pathlib import Path

import torch

from ..errors import InputError
from ..features import EmbeddingCache, padded_batch
from ..interpret import expert_descriptions
from ..personalization import adapt_router, adapt_to_pairs, load_router
from ..personalization.routers import save_router
from ..rewards import smoe_reward
from ..runtime import first_line, load_checkpoint
from .errors import RequestError

USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}")  # a name, never a path: no '/', no leading '.'
ROUTER_SUFFIX = ".safetensors"


def check_user_name(name: str, field: str = "user") -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise RequestError(422, field, f"{name!r} is not a user name: use 1-128 letters, digits, '_', '.', '@' or "
                           "'-', not starting with '.' or '-' (a name, never a path).")
    return name


def usable_device(name: str) -> torch.device:
    """`name` as a device this machine has, or an InputError naming it."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise InputError(f"device: cannot use {name!r} here ({first_line(error)}); give cpu, or a GPU this "
                         "machine has.") from None
    return device


class RewardService:
    """A checkpoint's rewards for every user, with users added and removed while serving.

    Args:
        checkpoint: an hf_smoe checkpoint folder or Hub id (heads-only ones load their backbone).
        routers_dir: folder of router files, one per user (`smoe adapt` output, file stem = user name); users
            learned over HTTP are written there. None: only the checkpoint's own router, and no user can be added.
        max_length: overrides the truncation length the checkpoint was trained with (`scoring_encoding`).
        cache_dir: the embedding cache that adapting a user reads and fills.
        device: where the model runs (default: this process's GPU if any, else CPU).
    """

    def __init__(self, checkpoint, routers_dir=None, max_length: int | None = None, cache_dir=None, device=None):
        self.checkpoint = str(checkpoint)
        self.model, self.tokenizer = load_checkpoint(checkpoint)
        if device is not None:
            self.model.to(usable_device(device))
        self.reward = smoe_reward(self.model, tokenizer=self.tokenizer, max_length=max_length)
        self.max_length = max_length
        self.routers_dir = None if routers_dir is None else Path(routers_dir).expanduser()
        self.cache_dir = cache_dir
        self.tokenizer_lock = threading.Lock()  # tokenizers are not shared across threads mid-call
        if self.routers_dir is not None:
            if self.routers_dir.exists() and not self.routers_dir.is_dir():
                raise InputError(f"routers: {self.routers_dir} is a file; give the folder of router files.")
            self.routers_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.routers_dir.glob(f"*{ROUTER_SUFFIX}")):
                if not USER_NAME.fullmatch(path.stem):
                    raise InputError(f"routers: {path.name} does not name a user (letters, digits, '_', '.', '@', "
                                     "'-'); rename it to the user's name.")
                self.reward.routers[path.stem] = load_router(path, self.model)
        self.descriptions = expert_descriptions(checkpoint) if Path(self.checkpoint).is_dir() else {}

    @property
    def name(self) -> str:
        return Path(self.checkpoint.rstrip("/")).name if Path(self.checkpoint).is_dir() else self.checkpoint

    @property
    def users(self) -> list:
        return sorted(self.reward.routers)

    def routers(self) -> dict:
        """The users' routers now (a copy: a batch scores against one set)."""
        return dict(self.reward.routers)

    def check_users(self, users: list, field: str) -> list:
        """`users` (None: the checkpoint's own router), or a 404 naming the first unknown one (`field` formatted with
        its index) and the known ones."""
        for index, user in enumerate(users):
            if user is not None and user not in self.reward.routers:
                raise RequestError(404, field.format(index),
                                   f"unknown user {user!r}; known users: {self.users[:20]}"
                                   f"{' ...' if len(self.users) > 20 else ''} (add one with PUT /v1/users/NAME, or "
                                   "send none for the checkpoint's own router).")
        return users

    def encode(self, pairs: list, field: str) -> list:
        """Encodings of (prompt, response) pairs, or a 422 naming the item."""
        return self._encoded(pairs, lambda pair: self.reward.encode(*pair), field)

    def encode_rendered(self, texts: list, prompt_texts: list | None, field: str) -> list:
        """Encodings of conversations rendered into one text each (with their rendered prompts when given)."""
        prompt_texts = prompt_texts or [None] * len(texts)
        return self._encoded(list(zip(texts, prompt_texts)), lambda item: self.reward.encode_rendered(*item), field)

    def _encoded(self, items: list, encode, field: str) -> list:
        encodings = []
        with self.tokenizer_lock:
            for index, item in enumerate(items):
                try:
                    encodings.append(encode(item))
                except InputError as error:  # its message names the library's field; the request's is `field`
                    raise RequestError(422, f"{field}[{index}]", re.sub(r"^[\w.]+: ", "", str(error))) from None
        return encodings

    def score(self, encodings: list, users: list, routers: dict) -> dict:
        """One batch through `smoe_reward`'s scoring path (blocking: the coalescer's worker thread runs it; requests
        go on being encoded meanwhile)."""
        with self.tokenizer_lock:
            batch = padded_batch(self.tokenizer, encodings, self.model.head.experts.weight.device)
        return self.reward.score_batch(batch, users, routers)

    def explain(self, routing: list, expert_rewards: list, top: int = 3) -> dict:
        """Why an item got its reward: its routing weights and per-expert rewards, and its `top` experts by weight
        with what `smoe interpret` found them to reward."""
        order = sorted(range(len(routing)), key=lambda k: -routing[k])[:top]
        return {"routing_weights": routing, "expert_rewards": expert_rewards,
                "top_experts": [{"expert": k, "weight": routing[k], "reward": expert_rewards[k],
                                 **self.descriptions.get(k, {"description": None})} for k in order]}

    def add_user(self, name: str, pairs, method: str, n: int | None, seed: int) -> dict:
        """Adapts a router to `pairs` (a pair-schema Dataset) as `smoe adapt` does, writes it atomically to the
        routers folder and serves it from the next batch on. n < len(pairs): the other pairs measure it."""
        if self.routers_dir is None:
            raise RequestError(409, "routers", "the server was started without --routers DIR, so a user's router "
                               "has nowhere to live; restart it with --routers DIR.")
        n = len(pairs) if n is None else n
        if not 0 < n <= len(pairs):
            raise RequestError(422, "n", f"must be between 1 and the {len(pairs)} pairs sent, got {n}.")
        with self.tokenizer_lock:
            if n < len(pairs):
                router, results = adapt_to_pairs(self.model, self.adaptation_cache, pairs, n, method, seed)
            else:
                router = adapt_router(self.model, self.adaptation_cache.pair_features(pairs), method, seed)
                results = {"method": method, "n": n, "eval_pairs": 0, "seed": seed}
        path = self.routers_dir / f"{name}{ROUTER_SUFFIX}"
        try:
            save_router(router, path, self.model, **results, user=name)
        except OSError as error:  # a full disk, a folder made read-only or removed: the old router stays
            reason = error.strerror or error
            raise RequestError(507, "routers", f"cannot write {path.name} in the routers folder ({reason}); {name!r} "
                               "keeps the router it had. Free space or fix the folder, then PUT again.") from None
        self.reward.routers[name] = router
        return results

    @functools.cached_property
    def adaptation_cache(self) -> EmbeddingCache:
        """The embedding cache adapting a user reads and fills, made once on the first `add_user` (its fingerprint
        reads every weight of the backbone, and its computing copy converts the backbone)."""
        return EmbeddingCache.of_checkpoint(self.model, self.tokenizer, self.max_length, cache_dir=self.cache_dir,
                                            show_progress=False)

    def remove_user(self, name: str) -> None:
        if name not in self.reward.routers:
            raise RequestError(404, "name", f"unknown user {name!r}; known users: {self.users[:20]}.")
        del self.reward.routers[name]
        if self.routers_dir is not None:
            (self.routers_dir / f"{name}{ROUTER_SUFFIX}").unlink(missing_ok=True)
