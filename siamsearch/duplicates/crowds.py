"""Crowds: pictures that are all close to each other without being copies, and the margin each one's duplicates need.

A global margin fits copies of a photo among unlike photos, but some kinds of picture sit close together in any
encoder's space: passport-style portraits against one backdrop, pages of one scanned document, frames of one
burst, textures. Their neighbours crowd within the margin, so a global margin would call the whole crowd one
group of duplicates. A copy stands out from its crowd: it is much nearer its original than the original's other
neighbours are (Lowe's ratio test for local features, applied to whole pictures; SSCD normalises its scores by
the same local density, Pizzi et al. 2022). So an image with CROWD or more distinct neighbours within the search
margin (dedup's review margin, which is the margin unless a wider one is given) is in a crowd, and its duplicates must lie within STAND_OUT times the distance to its CROWD-th nearest;
the others stay for review. An image with fewer such neighbours keeps the global margin: a group of up to CROWD
copies of one photo (the original and nine edits) is not a crowd. Measured on bench_userflow's folders filled
with faces (docs/benchmarks.md#crowds).
"""

from __future__ import annotations

import numpy as np

from .closepairs import ClosePairs, Pairs

CROWD = 10  # distinct neighbours within the margin that make a crowd
STAND_OUT = 0.8  # in a crowd, a duplicate lies within this share of the distance to the CROWD-th nearest


def crowd_margins(pairs: Pairs, ids: np.ndarray, crowd: int = CROWD, stand_out: float = STAND_OUT) -> np.ndarray:
    """For each id in `ids` (sorted), the margin its duplicates need: stand_out times the distance to its crowd-th
    nearest distinct neighbour among `pairs`, or inf when fewer than `crowd` neighbours are among them."""
    i, j, d = pairs
    ends = np.concatenate([i, j])
    order = np.lexsort((np.concatenate([d, d]), ends))  # by id, then distance
    ends, dist = ends[order], np.concatenate([d, d])[order]
    start = np.searchsorted(ends, ids, side="left")
    count = np.searchsorted(ends, ids, side="right") - start
    margins = np.full(len(ids), np.inf)
    crowded = count >= crowd
    margins[crowded] = stand_out * dist[start[crowded] + crowd - 1]
    return margins


def own_margins(found: ClosePairs, crowd: int = CROWD) -> dict[int, float]:
    """Each stored image's crowd margin (crowd_margins) by row id, a representative's shared by its exact copies;
    crowd 0: no crowds, every margin inf."""
    margins = crowd_margins(found.pairs, found.ids, crowd).tolist() if crowd else [np.inf] * len(found.ids)
    return {int(c): m for rep, m in zip(found.ids.tolist(), margins) for c in found.copies.get(rep, [rep])}
