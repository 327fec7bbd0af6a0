"""Where the encoder runs: the device rule, decode workers and mixed precision, for train, embed and eval."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from .errors import UsageError


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; a clear error when CUDA is asked for but missing."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(device)


def default_workers() -> int:
    """Decode workers: all cores but one for the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX), where autocast pays."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, amp: bool | None = None):
    """Mixed precision: bf16 (fp16 on older GPUs) on CUDA, bf16 on CPUs built for it.

    amp=None means "where it surely pays": on CUDA only (on a CPU, small nets run slower in bf16).
    """
    amp = device.type == "cuda" if amp is None else amp
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if amp and device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()
