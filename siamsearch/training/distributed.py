"""Training in several processes (torchrun): one global P×K batch, sharded by identity, the loss over all of it.

Every rank draws the same global batch from (seed, epoch, step), keeps its share of identities with all
K of their images, embeds them, and all-gathers the embeddings with their gradient, so each rank computes
the full-batch loss over every in-batch negative. Why no rescaling is needed: the gradient reaching a
rank's own embeddings through all_gather's backward is summed over the W ranks' identical losses (W × the
full-batch gradient), and DDP then averages over the W ranks: exactly the one-process gradient
(tests/test_ddp.py checks it to 1e-10 in float64). Only rank 0 validates, calibrates and writes files.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import UsageError
from .sampling import PKSampler

TIMEOUT = timedelta(minutes=30)  # how long a rank waits for the others, e.g. while rank 0 validates


class Clock(Protocol):
    """What the training loop asks of its clock (train._Clock)."""

    budget: float | None

    def elapsed(self) -> float: ...
    def out_of_time(self) -> bool: ...


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: rank 0 of 1 unless launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = None  # a gloo group for CPU-side agreement (the clock) next to an NCCL one

    @property
    def main(self) -> bool:
        """True on the one process that prints, validates and writes files."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) when training on CUDA in several processes."""
        return torch.device("cuda", self.local_rank) if self.size > 1 and device.type == "cuda" else device

    def seed(self, seed: int) -> int:
        """A seed for this rank's augmentation: rank 0 keeps `seed`, the others draw other views."""
        return seed + (self.rank << 32)

    def shard(self, sampler: PKSampler) -> PKSampler | Shards:
        """The sampler as this rank sees it: its share of every global batch."""
        return Shards(sampler, self) if self.size > 1 else sampler

    def wrap(self, model: nn.Module) -> nn.Module:
        """The network the training step calls: DDP (averaging gradients over ranks) around `model`.

        Keep it until the backward pass is done: DDP averages the gradients in hooks that die with it.
        Called every epoch, as DDP tracks only the parameters that train when it is built (--unfreeze
        adds some). On CUDA the BatchNorm layers become SyncBatchNorm first, so batch statistics span
        the global batch as they do in one process (gloo on CPU has no SyncBatchNorm).
        """
        if self.size == 1:
            return model
        if next(model.parameters()).is_cuda:
            sync_batchnorm(model)
        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)  # buffers (BatchNorm statistics) follow rank 0

    def gather(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (n_r, D) embeddings, with their gradient, and (n_r,) labels: the global batch in rank order.

        Ranks may hold different counts (singletons split unevenly, unreadable files dropped): rows are
        padded for the collective and the padding cut off. Every batch loss is a sum over pairs, triplets
        or anchors, so rank order gives the same loss as the sampler's order.
        """
        if self.size == 1:
            return emb, labels
        sizes = [torch.zeros(1, dtype=torch.int64, device=emb.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(labels)], device=emb.device))
        counts = [int(s) for s in sizes]
        pad = max(counts) - len(labels)
        with warnings.catch_warnings():  # torch 2.14 deprecates it for a private API; open_clip still uses it
            warnings.simplefilter("ignore", FutureWarning)
            embs = dist_nn.all_gather(torch.cat([emb, emb.new_zeros(pad, emb.shape[1])]))
        labs = [labels.new_empty(max(counts)) for _ in range(self.size)]
        dist.all_gather(labs, torch.cat([labels, labels.new_zeros(pad)]))
        return (torch.cat([e[:n] for e, n in zip(embs, counts)]), torch.cat([lab[:n] for lab, n in zip(labs, counts)]))

    def clock(self, clock: Clock) -> Clock:
        """The run's clock as rank 0 reads it, so all ranks stop at the same batch with the same learning rate."""
        return SharedClock(clock, self) if self.size > 1 else clock

    def barrier(self) -> None:
        """Wait for every rank: the others wait here while rank 0 validates and writes."""
        if self.size > 1:
            dist.barrier(group=self.control)


def sync_batchnorm(model: nn.Module) -> None:
    """Turn the BatchNorm layers of `model` into SyncBatchNorm in place, keeping their parameters and statistics."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            sync_batchnorm(child)


def shard(batch: list[int], p: int, k: int, rank: int, size: int) -> list[int]:
    """Rank `rank`'s share of a global P×K batch: P/size identities with all K images, and its part of the singletons."""
    per = p // size * k
    singletons = np.array_split(np.asarray(batch[p * k:], dtype=np.int64), size)[rank]
    return batch[rank * per:(rank + 1) * per] + singletons.tolist()


class Shards:
    """A P×K sampler whose batches every rank draws alike, cut to this rank's share (see `shard`)."""

    def __init__(self, sampler: PKSampler, world: World) -> None:
        self.sampler, self.world = sampler, world
        self.p = min(sampler.p, len(sampler.members))  # the sampler draws fewer when there are fewer identities
        if self.p % world.size:
            raise UsageError(f"{self.p} identities per batch (-P, or all there are) do not split over {world.size} "
                             f"processes; choose -P a multiple of {world.size}")

    def set_epoch(self, epoch: int) -> None:
        """Reseed the global sampler: every rank draws the same batches."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            yield shard(batch, self.p, self.sampler.k, self.world.rank, self.world.size)


class SharedClock:
    """Rank 0's reading of a clock, broadcast once a batch (when the loop asks whether time is up)."""

    def __init__(self, clock: Clock, world: World) -> None:
        self.clock, self.world, self.budget = clock, world, clock.budget
        self.seconds = clock.elapsed()

    def elapsed(self) -> float:
        """Seconds trained as of the last batch, the same on every rank."""
        return self.seconds

    def out_of_time(self) -> bool:
        """Read rank 0's clock (a collective: every rank calls it once a batch); True once the budget is spent."""
        now = torch.tensor([self.clock.elapsed()], dtype=torch.float64)
        dist.broadcast(now, src=0, group=self.world.control)
        self.seconds = float(now)
        return self.budget is not None and self.seconds >= self.budget


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    """An integer a launcher set, or a one-line error naming it."""
    try:
        return int(environ.get(name, default))
    except ValueError:
        raise UsageError(f"{name}={environ[name]!r} is not a number; launch with torchrun, which sets it") from None


def is_main(environ: Mapping[str, str]) -> bool:
    """False in the processes a launcher started besides rank 0: they print nothing."""
    return _int(environ, "RANK", 0) == 0


@contextmanager
def launched(environ: Mapping[str, str], device: torch.device) -> Iterator[World]:
    """This process's World from torchrun's RANK, WORLD_SIZE and LOCAL_RANK; the process group while inside.

    NCCL on CUDA (one GPU per process, by LOCAL_RANK), gloo on CPU; MASTER_ADDR and MASTER_PORT (set by
    torchrun, also across machines) say where the ranks meet. Without a launcher: one process, no group.
    """
    size = _int(environ, "WORLD_SIZE", 1)
    if size <= 1:
        yield World()
        return
    rank, local_rank = _int(environ, "RANK", 0), _int(environ, "LOCAL_RANK", 0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size, timeout=TIMEOUT)
    try:
        control = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None
        yield World(rank, size, local_rank, control)
    finally:
        dist.destroy_process_group()
