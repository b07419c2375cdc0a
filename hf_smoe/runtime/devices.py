"""Where and in what precision a process computes: its device (from accelerate) and the compute dtype of backbones
and generators (bf16 where the hardware multiplies it natively, else fp32; `$HF_SMOE_DTYPE` overrides it)."""

import os
from pathlib import Path

import torch

from ..errors import InputError
from .distributed import state


def pick_device() -> torch.device:
    """This process's device, from accelerate: its local GPU when there is CUDA, else CPU."""
    return state().device


DTYPE_VARIABLE = "HF_SMOE_DTYPE"  # float32 or bfloat16: overrides `fast_dtype`'s choice everywhere
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """`float32`, `bfloat16`: a dtype as `$HF_SMOE_DTYPE`, a checkpoint's encoding and the benchmarks name it."""
    return str(dtype).removeprefix("torch.")


def fast_dtype(device: torch.device) -> torch.dtype:
    """The dtype backbones and generators compute in on `device`: bf16 where the hardware multiplies it natively
    (CUDA with bf16; CPUs with AVX512-BF16 or AMX), else fp32; `$HF_SMOE_DTYPE` overrides it. On a CPU with
    avx512_bf16, SmolLM2-135M embeds and judges faster with bf16 weights (docs/benchmarks.md); autocast over fp32
    weights gains less."""
    chosen = os.environ.get(DTYPE_VARIABLE)
    if chosen:
        if chosen not in DTYPES:
            raise InputError(f"{DTYPE_VARIABLE}: {chosen!r} is not a compute dtype; set it to one of {sorted(DTYPES)} "
                             "or unset it (the hardware decides).")
        return DTYPES[chosen]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether the CPU we run on multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo's flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
