"""The training folder as the loop sees it: built once from the scan the recipe choice made, it owns its held-out
split, decoded cache, failures and purpose, and makes every view of a batch the loop, the validation and the
learned whitening see."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.config import EncoderConfig, Runtime, TrainConfig
from ..core.decoding import DecodedImages, decode_images, loader
from ..core.device import resolve_device, train_workers
from ..core.errors import UsageError
from ..core.images import Failure, Scan
from ..core.transforms import augment_batch, resize_batch, train_load_size
from .sampling import PKSampler, encode_labels, split_folder

SAMPLE = 4000  # training images the learned whitening is fitted on, at most (drawn at random when more)


@dataclass
class Split:
    """One side of the data: files, int labels, and (when cached) their decoded uint8 views."""

    paths: list[Path]
    labels: np.ndarray
    views: tuple[torch.Tensor, ...] = ()  # one (N, C, s, s) uint8 tensor per cached size


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


@dataclass
class TrainData:
    """Training and held-out validation splits of an image folder, and how to see them.

    purpose: "identities" (sub-folders are identities; positives are two images of one) or "near-duplicates"
    (every image its own identity; its positive an augmented view of itself), the word the calibration stores.
    """

    train: Split
    val: Split
    purpose: str
    enc: EncoderConfig
    cfg: TrainConfig
    workers: int = 0  # decode workers for batches not cached
    failures: list[Failure] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path, scan: Scan, enc: EncoderConfig, cfg: TrainConfig,
             runtime: Runtime = Runtime()) -> TrainData:
        """The scanned folder split into held-out identities, decoded into memory as far as the cache allows.

        Raises:
            UsageError: no images.
        """
        paths = scan.images
        if not paths:
            raise UsageError(f"no images found under {root}")
        names, tr, va, self_sup = split_folder(paths, root, cfg)
        labels, _ = encode_labels(names)
        data = cls(Split([], labels[:0]), Split([], labels[:0]), "near-duplicates" if self_sup else "identities",
                   enc, cfg, train_workers(runtime.workers, resolve_device(runtime.device)), list(scan.failures))
        load = train_load_size(enc.image_size)
        train_paths = [paths[i] for i in tr]
        fits = len(tr) * enc.channels * load * load <= runtime.cache_gb * 2**30
        train = data._decoded(train_paths, labels[tr], [load]) if fits else Split(train_paths, labels[tr])
        data.train = turned(train, 1 if self_sup else cfg.rotations)
        data.val = data._decoded([paths[i] for i in va], labels[va], [enc.image_size, load] if self_sup
                                 else [enc.image_size])
        return data

    @property
    def self_supervised(self) -> bool:
        """True when each image is its own identity."""
        return self.purpose == "near-duplicates"

    def _decoded(self, paths: list[Path], labels: np.ndarray, sizes: list[int]) -> Split:
        """A split decoded into memory, framed as the encoder frames its input; unreadable files recorded."""
        kept, views, bad = decode_images(paths, sizes, self.enc.channels, self.workers, framing=self.enc.framing)
        self.failures.extend(bad)
        return Split([paths[i] for i in kept], labels[kept], views)

    def sampler(self) -> PKSampler:
        """P×K batches of the training split; near-duplicate runs draw each image twice (K=2 views)."""
        return PKSampler(self.train.labels, self.cfg.ids_per_batch, 2 if self.self_supervised else
                         self.cfg.images_per_id, min_images=1 if self.self_supervised else 2, seed=self.cfg.seed)

    def batches(self, sampler: PKSampler, pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) per P×K batch, from the cache or decoded on the fly (pinned for a GPU)."""
        split = self.train
        if split.views:
            for idx in sampler:
                yield split.views[0][idx], torch.from_numpy(split.labels[idx])
            return
        images = DecodedImages(split.paths, [train_load_size(self.enc.image_size)], self.enc.channels,
                               framing=self.enc.framing)
        for batch in loader(images, self.workers, pin, batch_sampler=sampler):
            self.failures.extend(Failure(split.paths[i], why) for i, why in batch.failures)
            yield batch.views[0], torch.from_numpy(split.labels[batch.indices])

    def augmented(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A batch under the recipe's augmentation, at the input size: what training and the whitening see."""
        return augment_batch(images, self.enc.image_size, self.cfg.augment, gen)

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as it is, at the input size."""
        return resize_batch(images, self.enc.image_size)

    def validation(self) -> tuple[torch.Tensor, np.ndarray] | None:
        """The validation images as the encoder sees them, and their labels; None when nothing is held out.

        Near-duplicate runs validate on (image, augmented copy) pairs: exactly the question dedup asks.
        """
        val = self.val
        if not len(val.labels):
            return None
        if not self.self_supervised:
            return val.views[0], val.labels
        copies = self.augmented(val.views[1], torch.Generator().manual_seed(self.cfg.seed + 1))
        n = len(val.labels)
        return torch.cat([self.plain(val.views[1]), copies]), np.concatenate([np.arange(n), np.arange(n)])

    def whitening_sample(self, gen: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """Up to SAMPLE training images (uint8, the cached training view) and their identities, drawn at random
        (decoded now when the split was too large to cache); a near-duplicate image is an identity of its own."""
        pick = torch.randperm(len(self.train.labels), generator=gen)[:SAMPLE].sort().values.numpy()
        if self.train.views:
            images, labels = self.train.views[0][pick], self.train.labels[pick]
        else:
            kept, views, _ = decode_images([self.train.paths[i] for i in pick], [train_load_size(self.enc.image_size)],
                                           self.enc.channels, framing=self.enc.framing)
            images, labels = views[0], self.train.labels[pick[kept]]
        return images, np.arange(len(labels)) if self.self_supervised else labels
