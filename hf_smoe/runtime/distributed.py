"""Running on several processes (`torchrun`, `accelerate launch`): who we are, and the collectives the objective and
the embedding cache need. One process is the ordinary case: every function here is then a no-op."""

import os

import torch
import torch.distributed as dist
from accelerate import PartialState


def state() -> PartialState:
    """The process's place in the run (device, rank, count), from accelerate: one process, or one of several. On a
    machine without CUDA, processes started by `torchrun` are accelerate's multi-CPU run (gloo)."""
    return PartialState(cpu=not torch.cuda.is_available())


def launched_processes() -> int:
    """How many processes `torchrun` / `accelerate launch` started (1 for a plain run), before any state exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' (B, ...) tensors concatenated in rank order; the gradient of each rank's slice is the sum, over
    ranks, of the gradients flowing into that slice (all-reduce, which gloo supports, then this rank's share)."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank (B, ...) tensor, differentiable (every rank's B must be equal); the tensor
    itself in a single process."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor
