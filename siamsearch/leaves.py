"""Procedural "dead leaves" images: unlimited unlabelled training pictures made with no download.

A dead-leaves image is a stack of occluding shapes whose sizes follow a power law (r^-3), the
scale statistics of natural images; shapes are flat, striped or speckled. Baradad et al. (2021,
"Learning to See by Looking at Noise") show that contrastive training on such images learns
features that transfer to real photos. Added to a small self-supervised training folder (each file
is its own identity), they keep a small encoder from memorising a few hundred tiles:
scripts/bench_neardup.py trains on them beside tiles of ten photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("ellipse", "rectangle", "triangle")
MIN_RADIUS = 3.0  # pixels at the generated side


def _radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """n radii from the density r^-3 on [r_min, r_max] (inverse CDF), as in the dead-leaves model."""
    u = rng.random(n)
    return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def _fill(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float colours for one leaf: flat, a sine grating between two colours, or speckle."""
    a, b = rng.random(3), rng.random(3)
    kind = rng.random()
    if kind < 0.5:
        return np.broadcast_to(a, (*shape, 3))
    if kind < 0.8:
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        theta, period = rng.uniform(0, np.pi), rng.uniform(2.0, 16.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6.3))
    else:
        t = (rng.random(shape) < rng.uniform(0.2, 0.8)).astype(np.float64)
    return a + t[..., None] * (b - a)


def _mask(rng: np.random.Generator, kind: str, r: float, cx: float, cy: float,
          xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Boolean mask of one rotated shape of radius r centred at (cx, cy), over the grid (xx, yy)."""
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    a, b = r, r * rng.uniform(0.4, 1.0)
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    return (v <= b) & (v + b >= 2 * b * np.abs(u) / a)  # isosceles triangle, apex at v = -b


def dead_leaves(rng: np.random.Generator, side: int = 128, leaves: int = 200) -> Image.Image:
    """One RGB dead-leaves image: `leaves` shapes painted back to front over a background fill."""
    canvas = _fill(rng, (side, side)).copy()
    for r, kind in zip(_radii(rng, leaves, MIN_RADIUS, side / 2), rng.choice(SHAPES, size=leaves)):
        cx, cy = rng.uniform(-r / 2, side + r / 2, size=2)
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, side))
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, side))  # never empty: the centre is within r/2 of the canvas
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask = _mask(rng, str(kind), r, cx, cy, xx, yy)
        canvas[y0:y1, x0:x1][mask] = _fill(rng, mask.shape)[mask]
    return Image.fromarray((canvas * 255).round().astype(np.uint8), "RGB")


def write_dead_leaves(folder: Path, count: int, side: int = 128, seed: int = 0) -> Path:
    """`count` dead-leaves PNGs in folder (leaves_00000.png, ...): a self-supervised training set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        dead_leaves(rng, side).save(folder / f"leaves_{i:05d}.png")
    return folder
