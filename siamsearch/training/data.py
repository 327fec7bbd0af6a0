"""The training folder as the loop sees it: the held-out split, the decoded cache, P×K batches, validation views."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.config import EncoderConfig, Runtime, TrainConfig
from ..core.device import resolve_device, train_workers
from ..core.embed import DecodedImages, decode_images, loader
from ..core.errors import UsageError
from ..core.images import Failure, Selection, scan_images
from .sampling import PKSampler, encode_labels, split_folder
from ..core.transforms import augment_batch, resize_batch, train_load_size


@dataclass
class Split:
    """One side of the data: files, int labels, and (when cached) their decoded uint8 views."""

    paths: list[Path]
    labels: np.ndarray
    views: tuple[torch.Tensor, ...] = ()  # one (N, C, s, s) uint8 tensor per cached size


@dataclass
class TrainData:
    """Training and held-out validation splits of an image folder."""

    train: Split
    val: Split
    self_supervised: bool
    failures: list[Failure] = field(default_factory=list)


def _decode(paths: list[Path], labels: np.ndarray, sizes: list[int], enc: EncoderConfig, workers: int,
            failures: list[Failure]) -> Split:
    """Decode a split into memory, framed as the encoder frames its input, dropping (and recording) unreadable files."""
    kept, views, bad = decode_images(paths, sizes, enc.channels, workers, framing=enc.framing)
    failures.extend(bad)
    return Split([paths[i] for i in kept], labels[kept], views)


def turned(split: Split, rotations: int) -> Split:
    """The split and its copies turned by 360°/rotations steps, each turn of an identity a new identity.

    A character turned upside down is another character to tell apart: Omniglot's training classes ×4
    (Santoro et al. 2016, Vinyals et al. 2016). Needs the decoded cache.
    """
    if rotations == 1:
        return split
    if not split.views:
        raise UsageError("rotations need the training images decoded in memory; raise the cache size")
    step, offset = 4 // rotations, int(split.labels.max(initial=-1)) + 1
    return Split(split.paths * rotations, np.concatenate([split.labels + k * offset for k in range(rotations)]),
                 tuple(torch.cat([torch.rot90(v, k * step, dims=(2, 3)) for k in range(rotations)])
                       for v in split.views))


def load_data(root: Path, enc: EncoderConfig, cfg: TrainConfig, runtime: Runtime = Runtime(),
              selection: Selection = Selection()) -> TrainData:
    """Scan an identity folder (the files selection keeps), hold out validation identities, decode what fits.

    Sub-folders are identities. With no sub-folders (or --self-supervised) every image is its own
    identity and its positive is an augmented view of itself.
    """
    scan = scan_images(root, selection)  # its failures (FIFOs, broken links, loops) are reported with the decode failures
    paths = scan.images
    if not paths:
        raise UsageError(f"no images found under {root}")
    names, tr, va, self_sup = split_folder(paths, root, cfg)
    labels, _ = encode_labels(names)
    size, load = enc.image_size, train_load_size(enc.image_size)
    workers = train_workers(runtime.workers, resolve_device(runtime.device))
    failures: list[Failure] = list(scan.failures)
    train_paths = [paths[i] for i in tr]
    fits = len(tr) * enc.channels * load * load <= runtime.cache_gb * 2**30
    train = (_decode(train_paths, labels[tr], [load], enc, workers, failures) if fits
             else Split(train_paths, labels[tr]))
    train = turned(train, 1 if self_sup else cfg.rotations)
    val_sizes = [size, load] if self_sup else [size]
    val = _decode([paths[i] for i in va], labels[va], val_sizes, enc, workers, failures)
    return TrainData(train, val, self_sup, failures)


def sampler_for(data: TrainData, cfg: TrainConfig) -> PKSampler:
    """P×K batches of the training split; self-supervised runs draw each image twice (K=2 views)."""
    self_sup = data.self_supervised
    return PKSampler(data.train.labels, cfg.ids_per_batch, 2 if self_sup else cfg.images_per_id,
                     min_images=1 if self_sup else 2, seed=cfg.seed)


def train_batches(split: Split, sampler: PKSampler, load: int, enc: EncoderConfig, workers: int,
                  failures: list[Failure], pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) per P×K batch, from the memory cache or decoded on the fly (pinned for a GPU)."""
    if split.views:
        for idx in sampler:
            yield split.views[0][idx], torch.from_numpy(split.labels[idx])
        return
    images = DecodedImages(split.paths, [load], enc.channels, framing=enc.framing)
    for batch in loader(images, workers, pin, batch_sampler=sampler):
        failures.extend(Failure(split.paths[i], why) for i, why in batch.failures)
        yield batch.views[0], torch.from_numpy(split.labels[batch.indices])


def val_views(data: TrainData, enc: EncoderConfig, cfg: TrainConfig) -> tuple[torch.Tensor, np.ndarray] | None:
    """The validation images as the encoder sees them, and their labels; None when nothing is held out.

    Self-supervised runs validate on (image, augmented copy) pairs: exactly the question dedup asks.
    """
    val = data.val
    if not len(val.labels):
        return None
    if not data.self_supervised:
        return val.views[0], val.labels
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    copies = augment_batch(val.views[1], enc.image_size, cfg.augment, gen)
    clean = resize_batch(val.views[1], enc.image_size)
    n = len(val.labels)
    return torch.cat([clean, copies]), np.concatenate([np.arange(n), np.arange(n)])
