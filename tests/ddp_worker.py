"""Run by tests/test_ddp.py under torchrun: distributed steps on a tiny float64 model, rank 0 writes what they gave.

The test imports `problem`, `tiny_model` and `step` to compute the one-process answers the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from siamsearch.core.checkpoint import load_resume, save_resume
from siamsearch.training.distributed import World, launched
from siamsearch.training.losses import batch_loss
from siamsearch.training.sampling import PKSampler

P, K, EPOCHS = 4, 3, (1, 2)
LOSSES = {"contrastive": batch_loss("contrastive", None, 0.1), "triplet": batch_loss("triplet", None, 0.1),
          "ntxent": batch_loss("ntxent", None, 0.5)}


class Unit(nn.Module):
    """L2 normalisation, as the encoder ends."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def problem() -> tuple[torch.Tensor, np.ndarray, PKSampler]:
    """(35, 6) float64 inputs: 8 identities of 4 images and 3 singletons (split 2 / 1 over two ranks)."""
    labels = np.concatenate([np.repeat(np.arange(8), 4), np.arange(8, 11)])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((len(labels), 6)))
    return x, labels, PKSampler(labels, P, K, seed=3)


def tiny_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A BatchNorm-free float64 MLP, the same on every rank, and its AdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), Unit()).double()
    return model, torch.optim.AdamW(model.parameters(), lr=0.05)


def step(world: World, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: np.ndarray,
         idx: list[int], loss: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step as train._loop takes it: (loss, every parameter's gradient before the update)."""
    net = world.wrap(model)  # held until after backward: DDP averages the gradients in hooks it owns
    value = LOSSES[loss](*world.gather(net(x[idx]), torch.from_numpy(labels[idx])))
    optimizer.zero_grad()
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return value.item(), grads


def batches(world: World, sampler: PKSampler) -> list[list[list[int]]]:
    """This rank's share of every batch of EPOCHS."""
    shards = world.shard(sampler)
    out = []
    for epoch in EPOCHS:
        shards.set_epoch(epoch)
        out.extend(list(shards))
    return out


def main(folder: Path) -> None:
    """Shards, one step per loss, and a step, save, resume and step again; rank 0 writes the results."""
    x, labels, sampler = problem()
    with launched(os.environ, torch.device("cpu")) as world:
        shards = batches(world, sampler)
        every: list = [None] * world.size
        dist.all_gather_object(every, shards)
        results = {"shards": every, "world": world.size}
        for loss in LOSSES:
            model, opt = tiny_model()
            results[loss] = step(world, model, opt, x, labels, shards[0], loss) + (model.state_dict(),)
        model, opt = tiny_model()
        step(world, model, opt, x, labels, shards[0], "contrastive")
        if world.main:
            save_resume(folder / "state.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                              "encoder": {}, "train": {}, "epoch": 1, "history": [], "elapsed": 0.0})
        world.barrier()
        model, opt = tiny_model()
        state = load_resume(folder / "state.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        results["resumed"] = step(world, model, opt, x, labels, shards[1], "contrastive") + (model.state_dict(),)
        if world.main:
            torch.save(results, folder / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
