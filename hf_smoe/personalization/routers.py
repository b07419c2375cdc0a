"""Per-user routers: one small safetensors file per adapted user, many users scored from one backbone pass.

A router file holds only the router's weights (a few hundred kB) plus metadata, including a digest of the experts
it was adapted on: it loads onto any checkpoint whose experts are identical, and refuses any other, because the
routing weights only mean something for the experts they were fitted to.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers.activations import ACT2FN

from ..runtime import first_line
from ..errors import InputError
from ..modeling.modeling_smoe import SMoERouter, SMoEStaticRouter

ROUTER_FORMAT = "hf_smoe.router/1"


def experts_digest(head) -> str:
    """sha256 of the experts' weights and biases (exact bytes, float32): the identity a router file is bound to."""
    digest = hashlib.sha256()
    for tensor in (head.experts.weight, head.experts.bias):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def static_router(config, weights: torch.Tensor) -> SMoEStaticRouter:
    """An input-independent router that always returns `weights` (K,), e.g. HyRe's."""
    router = SMoEStaticRouter(config)
    router.logits.data.copy_(torch.log(weights.float().clamp_min(torch.finfo(torch.float32).tiny)))
    return router


def save_router(router, path, model, **info) -> Path:
    """Writes `router` (adapted for `model`'s experts) to `path` (.safetensors), with `info` (method, n, ...) as
    JSON metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = "static" if isinstance(router, SMoEStaticRouter) else "router"
    metadata = {"format": ROUTER_FORMAT, "routing": kind, "experts_sha256": experts_digest(model.head),
                "num_experts": str(model.config.num_experts), "hidden_size": str(model.config.hidden_size),
                "router_hidden_size": str(model.config.router_hidden_size),
                "router_activation": model.config.router_activation, "info": json.dumps(info, default=str)}
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in router.state_dict().items()}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(temporary), metadata=metadata)
        os.replace(temporary, path)  # a reader sees the old router or the new one, never half of one
    finally:
        temporary.unlink(missing_ok=True)  # a write that failed (a full disk) leaves nothing behind
    return path


def read_router_metadata(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"router: no such file {path}; write one with `smoe adapt ... --output ROUTER`.")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise InputError(f"router: {path} is not a safetensors file ({error}).") from None
    if metadata.get("format") != ROUTER_FORMAT:
        raise InputError(f"router: {path} is not an hf_smoe router file (format {metadata.get('format')!r}); "
                         "write one with `smoe adapt`.")
    try:
        metadata |= {"info": json.loads(metadata["info"]), "router_hidden_size": int(metadata["router_hidden_size"])}
        if metadata["routing"] not in ("router", "static") or metadata["router_activation"] not in ACT2FN:
            raise ValueError(metadata["routing"], metadata["router_activation"])
        metadata["experts_sha256"]  # noqa: B018  (must be there)
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"router: {path} has damaged metadata ({type(error).__name__}: {error}); adapt it again "
                         "with `smoe adapt`.") from None
    return metadata


def is_router_file(path) -> bool:
    """Whether `path` is a router file `save_router` wrote (so `smoe adapt --overwrite` may replace it)."""
    try:
        read_router_metadata(path)
    except InputError:
        return False
    return True


def load_router(path, model) -> torch.nn.Module:
    """The router stored at `path`, built for `model`; a ValueError when `model`'s experts are not the ones the
    router was adapted on."""
    metadata = read_router_metadata(path)
    digest = experts_digest(model.head)
    if metadata["experts_sha256"] != digest:
        raise InputError(f"router: {path} was adapted on different experts (sha256 {metadata['experts_sha256'][:12]}"
                         f", this checkpoint's are {digest[:12]}); adapt it again on this checkpoint with "
                         "`smoe adapt`.")
    config = copy.copy(model.config)
    config.router_hidden_size = metadata["router_hidden_size"]
    config.router_activation = metadata["router_activation"]
    router = SMoEStaticRouter(config) if metadata["routing"] == "static" else SMoERouter(config)
    try:
        state = load_file(str(path))
        router.load_state_dict(state)
    except (SafetensorError, RuntimeError) as error:
        raise InputError(f"router: {path} is damaged or does not fit this checkpoint's router "
                         f"({first_line(error)}); adapt it again with `smoe adapt`.") from None
    if not all(torch.isfinite(tensor).all() for tensor in state.values()):
        raise InputError(f"router: {path} holds NaN or infinite weights; adapt it again with `smoe adapt`.")
    return router.to(model.head.experts.weight.device).eval()


def set_router(model, router) -> torch.nn.Module:
    """Puts `router` on `model` in place, so that every forward routes with it (`AutoModel` users, TRL's
    `reward_funcs=model`): a router file (`smoe adapt --output`, refused when adapted on other experts) or a router
    module. Returns the router it replaced."""
    if not isinstance(router, torch.nn.Module):
        router = load_router(router, model)
    previous, model.head.router = model.head.router, router.to(model.head.experts.weight.device)
    return previous


@torch.no_grad()
def score_users(head, routers: list, prompt_embeddings: torch.Tensor, response_embeddings: torch.Tensor):
    """(U, N) rewards of N (prompt, response) representations for U users: the expert rewards are computed once and
    shared, only the routing differs per user (Eq. 2 per user)."""
    expert_rewards = head.experts(response_embeddings)  # (N, K), once for every user
    routing = torch.stack([router(prompt_embeddings) for router in routers])  # (U, N, K)
    return torch.einsum("unk,nk->un", routing, expert_rewards)
