"""What a model's calibration holds, and the margin it gives a collection of N images.

A model file stores its calibration (from training's best validation epoch, or `siamsearch calibrate`
on labelled data): the thresholds of CALIBRATION_KEYS, and `tails`, the distance distributions:
    different_pairs   how many pairs of distinct images were measured (every pair, up to MAX_ITEMS images)
    different_low     the TAIL smallest of their distances, sorted: the low tail in detail
    same_pairs        how many pairs of one identity (or one original and its copy)
    same_quantiles    their distances at 101 quantiles (0, 1, ..., 100 %)

The best-F1 distance is fitted on *balanced* pairs, but in a collection of N images different pairs
outnumber duplicates by about N/2 to one. So dedup's default margin for an index of N images is the
largest distance at which the expected number of false pairs among its N(N-1)/2 pairs stays within
a budget (FALSE_PAIRS_PER_1000 per 1,000 images), and never looser than the balanced one: the same
model gets a tighter margin on a million images than on a hundred.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .metrics import pairwise_distances

# The thresholds a model file stores besides the tails (training and `calibrate`); dedup reads them.
CALIBRATION_KEYS = ("threshold_best_f1", "best_f1", "threshold_at_precision", "precision_at_threshold",
                    "recall_at_threshold", "target_precision", "threshold_at_recall", "target_recall")
TAIL = 2000  # smallest different-pair distances kept exactly
MAX_ITEMS = 20_000  # images whose every pair is measured; a larger calibration set is subsampled
BLOCK = 512  # rows of the pairwise distance matrix computed at a time
FALSE_PAIRS_PER_1000 = 1.0  # dedup's default budget: expected false pairs per 1,000 indexed images
FIT_POINTS = 200  # smallest measured distinct-pair distances the tail's fit uses, below the first of them
MIN_MARGIN = 1e-6  # a margin must be positive: a model that puts distinct images at 0 gets this


PURPOSES = ("near-duplicates", "identities")


def purpose_of(calibration: Mapping[str, Any], self_supervised: bool | None) -> str:
    """What a model was trained for: its calibration says; in files from before that, its training config."""
    if calibration.get("purpose") in PURPOSES:
        return calibration["purpose"]
    return "identities" if self_supervised is False else "near-duplicates"


def calibrated_margin(calibration: Mapping[str, Any]) -> float:
    """The balanced margin: best F1, capped at the target-recall distance.

    The best-F1 distance on near-duplicate copies reaches for the last few percent of same pairs (a
    brightened, cropped copy); the recall distance needs no negatives. On identity data the recall
    distance lies beyond best F1 and changes nothing. Files calibrated before it was stored use best F1.
    """
    return float(min(calibration["threshold_best_f1"], calibration.get("threshold_at_recall", math.inf)))


def distance_tails(emb: np.ndarray, labels: np.ndarray, seed: int = 0,
                   groups: np.ndarray | None = None) -> dict[str, Any]:
    """The tails a calibration stores, from every pair of (up to MAX_ITEMS) labelled embeddings.

    groups: (N,) optional; pairs of two identities of one group are neither same nor different pairs
    (see metrics.verification_metrics).

    Returns:
        {different_pairs, different_low (TAIL floats, ascending), same_pairs, same_quantiles (101 floats)}.
    """
    emb, labels = np.asarray(emb, np.float32), np.asarray(labels)
    groups = labels if groups is None else np.asarray(groups)
    if len(emb) > MAX_ITEMS:
        pick = np.random.default_rng(seed).choice(len(emb), MAX_ITEMS, replace=False)
        emb, labels, groups = emb[pick], labels[pick], groups[pick]
    codes, group_codes = np.unique(labels, return_inverse=True)[1], np.unique(groups, return_inverse=True)[1]
    low, same, different = np.zeros(0, np.float32), [], 0
    for start in range(0, len(emb), BLOCK):
        d = pairwise_distances(emb[start:start + BLOCK], emb)
        rows = np.arange(start, start + len(d))
        upper = np.arange(len(emb))[None, :] > rows[:, None]
        is_same = codes[rows, None] == codes[None, :]
        diff = d[upper & (group_codes[rows, None] != group_codes[None, :])]
        different += diff.size
        low = np.sort(np.concatenate([low, np.partition(diff, TAIL)[:TAIL] if diff.size > TAIL else diff]))[:TAIL]
        same.append(d[upper & is_same])
    same_d = np.concatenate(same) if same else np.zeros(0, np.float32)
    quantiles = np.quantile(same_d, np.linspace(0, 1, 101)).tolist() if same_d.size else []
    return {"different_pairs": int(different), "different_low": [float(x) for x in low],
            "same_pairs": int(same_d.size), "same_quantiles": [float(x) for x in quantiles]}


@dataclass(frozen=True)
class MarginChoice:
    """dedup's default margin for one index, and what to expect of it."""

    margin: float
    rule: str  # "collection" | "collection, extrapolated" | "best F1" (cap or no tails stored)
    expected_false_pairs: float | None  # among the index's N(N-1)/2 pairs, None when unknown
    expected_recall: float | None  # share of the calibration's same pairs within the margin

    def to_dict(self) -> dict[str, Any]:
        """margin, margin_rule, expected_false_pairs, expected_recall, for dedup's JSON."""
        return {"margin": self.margin, "margin_rule": self.rule, "expected_false_pairs": self.expected_false_pairs,
                "expected_recall": self.expected_recall}


def false_pair_rate(tails: Mapping[str, Any], margin: float) -> float:
    """Share of distinct-image pairs within margin: counted where any was measured, else from the tail's fit."""
    low = np.asarray(tails["different_low"], np.float64)
    count = int(np.searchsorted(low, margin, side="right"))
    if count or len(low) < 2:
        return count / max(1, tails["different_pairs"])
    a, b = _tail_fit(low, tails["different_pairs"])
    return NormalDist().cdf(a + b * margin)


def _tail_fit(low: np.ndarray, measured: int) -> tuple[float, float]:
    """z ≈ a + b·d, z the normal quantile of each measured pair's rank: a Gaussian lower tail, to go below it.

    An exponential fit (log rank against distance) is far too heavy for the tails of embedding
    distances and collapses the margin; the Gaussian one follows them (tests/test_calibration.py).
    """
    low = low[:FIT_POINTS]  # the local slope of the tail: a fit over the whole tail flattens it
    ranks = (np.arange(1, len(low) + 1) - 0.5) / measured  # mid-rank: every rate strictly inside (0, 1)
    z = np.array([NormalDist().inv_cdf(r) for r in ranks])
    b, a = np.polyfit(low, z, 1)
    return float(a), float(max(b, 1e-6))


def collection_margin(calibration: Mapping[str, Any], n: int,
                      false_pairs_per_1000: float = FALSE_PAIRS_PER_1000) -> MarginChoice:
    """The largest margin whose expected false pairs among n images' n(n-1)/2 pairs stay within the budget."""
    cap = calibrated_margin(calibration)
    tails = calibration.get("tails")
    if not tails or not tails.get("different_pairs") or n < 2:
        return MarginChoice(cap, "best F1", None, _recall(tails, cap))
    pairs = n * (n - 1) / 2
    rate = false_pairs_per_1000 * n / 1000 / pairs  # the share of distinct pairs the budget allows within the margin
    low = np.asarray(tails["different_low"], np.float64)
    allowed = rate * tails["different_pairs"]  # measured pairs that share allows
    if allowed >= 1 or len(low) < 2:
        margin, rule = (float(low[min(int(allowed), len(low)) - 1]) if allowed >= 1 else 0.0), "collection"
    else:
        a, b = _tail_fit(low, tails["different_pairs"])
        margin, rule = (NormalDist().inv_cdf(rate) - a) / b, "collection, extrapolated"
        margin = min(margin, float(np.nextafter(low[0], 0)))  # below the first measured pair, where the fit applies
    if cap < margin:
        margin, rule = cap, "best F1"
    margin = max(margin, MIN_MARGIN)
    return MarginChoice(margin, rule, false_pair_rate(tails, margin) * pairs, _recall(tails, margin))


def _recall(tails: Mapping[str, Any] | None, margin: float) -> float | None:
    """Share of the calibration's same pairs within margin (from the stored quantiles), or None."""
    quantiles = (tails or {}).get("same_quantiles") or []
    if not quantiles:
        return None
    return float(np.interp(margin, quantiles, np.linspace(0, 1, len(quantiles)), left=0.0, right=1.0))
