"""Where the encoder runs: the device rule, decode workers and the one precision rule, for train, embed and eval.

Precision: the trunk may run in bf16 (fp16 on GPUs without bf16) under autocast; the head and the L2
normalisation always run in fp32 (siamsearch.core.model). An index records the precision that embedded it,
and queries and updates of that index embed in the same one (siamsearch.index.indexing, siamsearch.index.search).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from .errors import UsageError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # name → autocast dtype


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; a clear error when CUDA is asked for but missing."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(device)


def default_workers(device: torch.device | None = None) -> int:
    """Decode workers, at most 8: all cores but one for the main process that feeds a GPU; on a CPU (device
    cpu), one per core, since the encoder takes every core whenever it has a batch (decoding.loader's polite
    workers yield to it) and the workers then decode on every core while it waits for the next."""
    return max(0, min(8, (os.cpu_count() or 1) - (device is None or device.type != "cpu")))


def train_workers(workers: int | None, device: torch.device) -> int:
    """Training's decode workers: None means default_workers() on a GPU, which starves when the main process
    decodes, and 0 on a CPU, whose cores run the model (and the cache is decoded only once)."""
    if workers is not None:
        return workers
    return default_workers() if device.type == "cuda" else 0


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX), where autocast pays."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def precision(device: torch.device, amp: bool | None = None) -> str:
    """The one precision rule: "bf16" (or "fp16" on GPUs without bf16) with mixed precision, else "fp32".

    amp=None means "where it surely pays": on CUDA only (on a CPU, small nets run slower in bf16).
    amp=True on a CPU gives bf16 even without native bf16 instructions (slowly): an index says so.
    """
    if not (device.type == "cuda" if amp is None else amp):
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def amp_for(name: str) -> bool:
    """The amp flag that gives precision `name` (fp16 and bf16 are both mixed precision)."""
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; one of {', '.join(PRECISIONS)}")
    return name != "fp32"


def autocast(device: torch.device, amp: bool | None = None):
    """Autocast for the trunk in the precision `precision(device, amp)` names; none for fp32."""
    dtype = PRECISIONS[precision(device, amp)]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
