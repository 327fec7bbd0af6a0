"""Batched decoding and embedding of many images: the one torch → numpy boundary.

Bad files never raise here: they come back as a list of Failure(path, reason).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import Preprocess
from .device import autocast, default_workers
from .images import ORIGINAL_SIZE, BadImageError, Failure, load_image
from .transforms import normalize, square_view

Progress = Callable[[int, int], None]  # (done, total): files finished so far, of all there are to do


class DecodedImages(Dataset):
    """Decodes image i to square uint8 views at one or more sizes; a bad file yields its reason."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], channels: int) -> None:
        self.paths, self.sizes, self.channels = list(paths), tuple(sizes), channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, tuple[torch.Tensor, ...] | None, tuple[int, int], str]:
        try:
            img = load_image(self.paths[i], self.channels, draft_size=max(self.sizes))
        except BadImageError as exc:
            return i, None, (0, 0), exc.reason
        return i, tuple(square_view(img, s) for s in self.sizes), img.info.get(ORIGINAL_SIZE, img.size), ""


def keep_list(items: list) -> list:
    """Keep items as a list: failed ones carry None instead of tensors."""
    return items


def _batches(paths: Sequence[Path], sizes: Sequence[int], channels: int, batch_size: int, workers: int,
             pin: bool = False):
    """Yield (indices, tensors per size, original sizes, failures) batch by batch, in order."""
    loader = DataLoader(DecodedImages(paths, sizes, channels), batch_size=batch_size, num_workers=workers,
                        collate_fn=keep_list, pin_memory=False, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    for items in loader:
        good = [it for it in items if it[1] is not None]
        failures = [Failure(Path(paths[it[0]]), it[3]) for it in items if it[1] is None]
        stacks = tuple(torch.stack([it[1][j] for it in good]) if good else None for j in range(len(sizes)))
        if pin and good:
            stacks = tuple(s.pin_memory() for s in stacks)
        yield [it[0] for it in good], stacks, [it[2] for it in good], failures


def decode_images(paths: Sequence[Path], sizes: Sequence[int], channels: int, workers: int = 0,
                  progress: Progress | None = None) -> tuple[np.ndarray, tuple[torch.Tensor, ...], list[Failure]]:
    """Decode every image once into memory (training cache).

    Returns:
        (kept indices into paths, one uint8 (N, C, s, s) tensor per size, failures).
    """
    kept: list[int] = []
    chunks: list[tuple[torch.Tensor, ...]] = []
    failures: list[Failure] = []
    for idx, stacks, _, bad in _batches(paths, sizes, channels, 256, workers):
        kept.extend(idx)
        failures.extend(bad)
        if idx:
            chunks.append(stacks)
        if progress:
            progress(len(kept) + len(failures), len(paths))
    empty = tuple(torch.empty(0, channels, s, s, dtype=torch.uint8) for s in sizes)
    tensors = tuple(torch.cat([c[j] for c in chunks]) if chunks else empty[j] for j in range(len(sizes)))
    return np.array(kept, dtype=np.int64), tensors, failures


@dataclass
class EmbedResult:
    """Embeddings of the readable images, in input order, and the files that were skipped."""

    paths: list[Path] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, D), unit rows
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height)
    failures: list[Failure] = field(default_factory=list)


@torch.inference_mode()
def embed_tensors(model: torch.nn.Module, batch: torch.Tensor, pre: Preprocess, device: torch.device,
                  amp: bool | None = None) -> np.ndarray:
    """uint8 or [0, 1] (B, C, S, S) images → (B, D) float32 unit vectors."""
    x = normalize(batch.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        return model(x).float().cpu().numpy()


def _dim(model: torch.nn.Module) -> int:
    """Embedding size, so that no readable file still gives a (0, D) array."""
    return model.cfg.dim if hasattr(model, "cfg") else 0


def embed_batches(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = 64,
                  workers: int | None = None, device: torch.device | str = "cpu",
                  amp: bool | None = None) -> Iterator[EmbedResult]:
    """Embed many image files as one stream: one DataLoader and worker pool for all, a batch at a time.

    A caller that stores results as they come (siamsearch.indexing) keeps its work if stopped midway.

    Yields:
        One EmbedResult per batch, in input order: vectors (B, D) float32, rows L2-normalised.
    """
    device = torch.device(device)
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    workers = default_workers() if workers is None else workers
    for idx, (stack,), sizes, bad in _batches(paths, [pre.image_size], pre.channels, batch_size, workers,
                                              pin=device.type == "cuda"):
        vectors = embed_tensors(model, stack, pre, device, amp) if idx else np.zeros((0, _dim(model)), np.float32)
        yield EmbedResult([Path(paths[i]) for i in idx], vectors, sizes, bad)


def embed_paths(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = 64,
                workers: int | None = None, device: torch.device | str = "cpu", amp: bool | None = None,
                progress: Progress | None = None) -> EmbedResult:
    """Embed many image files in batches with worker processes decoding ahead of the model.

    Returns:
        EmbedResult with vectors (N, D) float32, rows L2-normalised, for the readable files.
    """
    out, vecs = EmbedResult(), [np.zeros((0, _dim(model)), np.float32)]
    for batch in embed_batches(model, pre, paths, batch_size=batch_size, workers=workers, device=device, amp=amp):
        out.paths.extend(batch.paths)
        out.sizes.extend(batch.sizes)
        out.failures.extend(batch.failures)
        vecs.append(batch.vectors)
        if progress:
            progress(len(out.paths) + len(out.failures), len(paths))
    out.vectors = np.concatenate(vecs)
    return out
