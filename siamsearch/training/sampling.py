"""Identity labels → held-out splits and P×K batches, where every pair inside a batch is used."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..core.config import TrainConfig
from ..core.errors import UsageError
from ..core.images import identity_of


def encode_labels(identities: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Map identity names to int ids: (ids (N,) int64, names indexed by id)."""
    names = sorted(set(identities))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[x] for x in identities], dtype=np.int64), names


def _usable(identities: Sequence[str], idx: np.ndarray, min_images: int) -> int:
    """How many identities have at least `min_images` images among `idx`: those that can form pairs."""
    counts = Counter(identities[i] for i in idx)
    return sum(n >= min_images for n in counts.values())


def group_of(identity: str, depth: int) -> str:
    """The first `depth` folders of an identity ("Latin/character05", 1 → "Latin"); depth 0: the identity itself."""
    return "/".join(identity.split("/")[:depth]) if depth else identity


def split_identities(identities: Sequence[str], val_fraction: float, group_depth: int = 0,
                     seed: int = 0, min_images: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole identities (or whole groups of them) for validation.

    Nothing is held out when either side would keep fewer than 2 identities with `min_images`+ images:
    training could form no pairs, or validation could measure nothing (the run then keeps its last epoch).

    Args:
        identities: identity of each image, e.g. "Latin/character05".
        val_fraction: fraction of groups that go to validation.
        group_depth: 0 splits identities; 1 splits by their first folder (whole alphabets), etc.
        min_images: images an identity needs to form pairs (1 when self-supervised).

    Returns:
        (train indices, val indices) into `identities`.
    """
    groups = [group_of(x, group_depth) for x in identities]
    names = sorted(set(groups))
    nothing = np.arange(len(identities)), np.array([], dtype=np.int64)
    if val_fraction <= 0 or len(names) < 2:
        return nothing
    rng = np.random.default_rng(seed)
    n_val = min(len(names) - 1, max(1, round(len(names) * val_fraction)))
    val_names = set(rng.permutation(names)[:n_val].tolist())
    is_val = np.array([g in val_names for g in groups])
    split = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return split if min(_usable(identities, side, min_images) for side in split) >= 2 else nothing


def split_folder(paths: list[Path], root: Path, cfg: TrainConfig) -> tuple[list[str], np.ndarray, np.ndarray, bool]:
    """Identity names and the train/validation split of a training folder; `eval --held-out` repeats it.

    Returns:
        (name of each path's identity, train indices, validation indices, self-supervised).
    """
    ids = [identity_of(p, root) for p in paths]
    self_sup = cfg.self_supervised or all(i is None for i in ids)
    names = [p.relative_to(root).as_posix() if self_sup or i is None else i for p, i in zip(paths, ids)]
    tr, va = split_identities(names, cfg.val_fraction, 0 if self_sup else cfg.val_group_depth, cfg.seed,
                              min_images=1 if self_sup else 2)
    return names, tr, va, self_sup


class PKSampler:
    """Batches of P identities × K images each, plus singleton identities as extra negatives.

    Identities with at least `min_images` images are drawn as the P; their K images are drawn
    without replacement when there are enough, else with replacement (self-supervised training uses
    min_images=1 and K=2: two augmented views of one image). Identities below `min_images` join
    each batch only as single images, so they serve as negatives and never as positives.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, min_images: int = 2, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        by_id: dict[int, list[int]] = {}
        for i, lab in enumerate(self.labels.tolist()):
            by_id.setdefault(lab, []).append(i)
        self.members = {lab: np.array(ix) for lab, ix in by_id.items() if len(ix) >= min_images}
        self.singletons = np.array([ix[0] for ix in by_id.values() if len(ix) < min_images], dtype=np.int64)
        if len(self.members) < 2:
            raise UsageError(f"need at least 2 identities with {min_images}+ images to form pairs; "
                             f"found {len(self.members)}")
        self.batches = max(1, math.ceil(len(self.labels) / (p * k)))

    def set_epoch(self, epoch: int) -> None:
        """Reseed so each epoch differs yet a resumed run repeats the same batches."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        ids = np.array(list(self.members))
        p = min(self.p, len(ids))
        for _ in range(self.batches):
            batch: list[int] = []
            for lab in rng.choice(ids, size=p, replace=False):
                pool = self.members[int(lab)]
                batch.extend(rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist())
            if len(self.singletons):
                batch.extend(rng.choice(self.singletons, size=min(p, len(self.singletons)), replace=False).tolist())
            yield batch
