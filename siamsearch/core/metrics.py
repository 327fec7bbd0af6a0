"""Retrieval and verification metrics and threshold choice: pure numpy, bounded memory.

Embeddings are (N, D) float32 rows; distances are Euclidean, smaller meaning "same identity".
Nearest neighbours are found in blocks of query rows, so no N x N matrix is ever held.
Retrieval metrics follow Musgrave, Belongie & Lim, "A Metric Learning Reality Check" (2020).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

# Share of same pairs the recall threshold holds: past it, a balanced best-F1 threshold is only chasing
# the far tail of the same pairs, and a collection's many different pairs make that tail costly.
TARGET_RECALL = 0.975


def _as_embeddings(emb: np.ndarray) -> np.ndarray:
    """(N, D) float32, checked finite: a NaN would silently corrupt every neighbour list."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise ValueError(f"embeddings must be a finite (N, D) array; got shape {emb.shape}")
    return emb


def _encode(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of any kind (ints, strings) → (codes (N,) int, items per code)."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must be 1-D with one entry per embedding ({n}); got shape {labels.shape}")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return codes.ravel(), counts


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances via one matrix product, clipped at 0 so rounding never gives NaN.

    Args:
        a: (N, D) rows.
        b: (M, D) rows.

    Returns:
        (N, M) float32.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    d = a @ b.T
    d *= -2
    d += np.einsum("ij,ij->i", a, a)[:, None]
    d += np.einsum("ij,ij->i", b, b)[None, :]
    np.maximum(d, 0, out=d)
    return np.sqrt(d, out=d)


def pair_distances(emb: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 65536) -> np.ndarray:
    """Distance of each listed pair, gathered in blocks so memory stays bounded for many pairs.

    Returns:
        (P,) float32, the distance between emb[i[p]] and emb[j[p]].
    """
    emb = _as_embeddings(emb)
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), block):
        diff = emb[i[s:s + block]] - emb[j[s:s + block]]
        out[s:s + block] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _knn_block(emb: np.ndarray, start: int, stop: int, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of rows start:stop against all rows; equal distances ordered by index."""
    d = pairwise_distances(emb[start:stop], emb)
    rows = np.arange(stop - start)
    if exclude_self:
        d[rows, rows + start] = np.inf
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    r, c = np.nonzero(d <= kth)  # at least k per row; more when the k-th distance is tied
    order = np.lexsort((c, d[r, c], r))
    r, c = r[order], c[order]
    idx = c[np.searchsorted(r, rows)[:, None] + np.arange(k)]
    return np.take_along_axis(d, idx, axis=1), idx


def _knn_blocks(emb: np.ndarray, k: int, exclude_self: bool,
                block: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, dist, idx) per block of query rows: memory is O(block x N), not O(N x N)."""
    if not 1 <= k <= len(emb) - exclude_self:
        raise ValueError(f"k={k} neighbours asked of {len(emb)} rows (exclude_self={exclude_self})")
    for start in range(0, len(emb), block):
        yield start, *_knn_block(emb, start, min(start + block, len(emb)), k, exclude_self)


def nearest_neighbors(emb: np.ndarray, k: int, exclude_self: bool = True,
                      block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by brute force in row blocks: ground truth, with no index to build.

    Args:
        emb: (N, D) embeddings.
        k: neighbours per row, at most N - 1 when excluding self.
        exclude_self: drop each row from its own list.
        block: query rows per block; peak memory is a few block x N float32 arrays.

    Returns:
        (dist (N, k) float32 ascending, idx (N, k) int64); equal distances are ordered by index.
    """
    emb = _as_embeddings(emb)
    parts = list(_knn_blocks(emb, k, exclude_self, block))
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _pair_index(p: np.ndarray, sizes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positive-pair numbers → positions (a, b), a < b, in the label-sorted order.

    Pairs of a group of size c are numbered b(b-1)/2 + a, so a number decodes without listing pairs
    (exactly in float64 for groups of up to ~10^7 items).
    """
    offsets = np.concatenate([[0], np.cumsum(sizes * (sizes - 1) // 2)])
    g = np.searchsorted(offsets, p, side="right") - 1
    r = p - offsets[g]
    b = np.floor((1 + np.sqrt(1 + 8 * r.astype(np.float64))) / 2).astype(np.int64)
    return starts[g] + r - b * (b - 1) // 2, starts[g] + b


def sample_pairs(labels: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verification pairs: positives (all, or a seeded sample) and as many seeded random negatives.

    Positives are distinct same-label pairs, all of them when they number at most max_pairs // 2.
    Negatives are drawn uniformly (with replacement) from the pairs of different labels. Identities
    with one image only take part as negatives.

    Args:
        labels: (N,) identities, ints or strings.
        max_pairs: at most this many pairs in all, half same and half different.
        seed: makes the sample repeatable, so epochs are compared on the same pairs.

    Returns:
        (i (P,), j (P,), same (P,) bool), positives first.
    """
    codes, counts = _encode(labels, len(labels))
    if len(counts) < 2 or counts.max() < 2:
        raise ValueError("verification pairs need at least 2 identities and one identity with 2+ images")
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    total = int((counts * (counts - 1) // 2).sum())
    n = min(total, max_pairs // 2)
    p = np.arange(total) if n == total else np.sort(rng.choice(total, size=n, replace=False))
    a, b = _pair_index(p, counts, starts)
    # Negatives: i weighted by how many items differ from its label, then j uniform among those items.
    c = counts[codes]
    i = rng.choice(len(codes), size=n, p=(len(codes) - c) / (len(codes) - c).sum())
    r = rng.integers(0, len(codes) - c[i])
    j = order[np.where(r < starts[codes[i]], r, r + c[i])]
    same = np.repeat([True, False], n)
    return np.concatenate([order[a], i]), np.concatenate([order[b], j]), same


def _check(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 distances and bool labels, with both classes present (else no rate is defined)."""
    d, s = np.asarray(distances, dtype=np.float64).ravel(), np.asarray(same, dtype=bool).ravel()
    if d.shape != s.shape or s.all() or not s.any():
        raise ValueError("need matching distances and `same` with at least one same and one different pair")
    return d, s


def _counts(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """At each observed distance t (call "same" when d <= t): (t ascending, tp, fp, positives, negatives)."""
    d, s = _check(distances, same)
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    last = np.flatnonzero(np.append(d[1:] != d[:-1], True))  # last index of each distinct distance
    tp = np.cumsum(s)[last]
    fp = (last + 1) - tp
    return d[last], tp, fp, int(s.sum()), int((~s).sum())


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    """Probability that a same pair is closer than a different pair, ties counting half (Mann-Whitney U).

    Args:
        distances: (P,) pair distances.
        same: (P,) bool, True for same-identity pairs.
    """
    d, s = _check(distances, same)
    _, inv, counts = np.unique(d, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based average rank of each distinct distance
    n_pos, n_neg = int(s.sum()), int((~s).sum())
    u = avg_rank[inv.ravel()[~s]].sum() - n_neg * (n_neg + 1) / 2  # (neg, pos) pairs with neg farther
    return float(u / (n_pos * n_neg))


def roc_curve(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true accept rates at every observed threshold, for plots.

    Returns:
        (far, tar, thresholds), each (T + 1,), thresholds ascending; the first point is
        (0, 0) at threshold -inf, where nothing is accepted.
    """
    t, tp, fp, n_pos, n_neg = _counts(distances, same)
    return (np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos]),
            np.concatenate([[-np.inf], t]))


def eer(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Equal error rate: at the observed threshold where FAR and FRR are closest (the smallest on ties), their mean.

    Returns:
        (eer, threshold).
    """
    t, tp, fp, n_pos, n_neg = _counts(distances, same)
    far, frr = fp / n_neg, 1 - tp / n_pos
    k = int(np.argmin(np.abs(far - frr)))
    return float((far[k] + frr[k]) / 2), float(t[k])


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> float:
    """Best true accept rate among thresholds whose false accept rate is at most `far` (0 if none)."""
    rates, tar, _ = roc_curve(distances, same)
    return float(tar[rates <= far].max())


def best_f1_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float, float, float]:
    """The observed distance t maximising F1 when pairs with d <= t are called same (smallest t on ties).

    Returns:
        (threshold, f1, precision, recall).
    """
    t, tp, fp, n_pos, _ = _counts(distances, same)
    f1 = 2 * tp / (tp + fp + n_pos)
    k = int(np.argmax(f1))
    return float(t[k]), float(f1[k]), float(tp[k] / (tp[k] + fp[k])), float(tp[k] / n_pos)


def threshold_at_precision(distances: np.ndarray, same: np.ndarray,
                           target: float = 0.99) -> tuple[float, float, float]:
    """The largest threshold with precision >= target: the most recall at that precision.

    Precision is not monotone in the threshold, so every observed distance is checked. When none
    reaches the target, the (largest) threshold of highest precision is returned; the returned
    precision, below target, says so.

    Returns:
        (threshold, precision, recall).
    """
    t, tp, fp, n_pos, _ = _counts(distances, same)
    precision = tp / (tp + fp)
    ok = np.flatnonzero(precision >= target)
    k = int(ok[-1]) if len(ok) else len(t) - 1 - int(np.argmax(precision[::-1]))
    return float(t[k]), float(precision[k]), float(tp[k] / n_pos)


def threshold_at_recall(distances: np.ndarray, same: np.ndarray, target: float = TARGET_RECALL) -> float:
    """The smallest observed distance within which a fraction `target` of the same pairs fall; no negatives needed."""
    if not 0 <= target <= 1:
        raise ValueError(f"target recall must be within [0, 1], got {target}")
    d, s = _check(distances, same)
    same_d = np.sort(d[s])
    return float(same_d[max(math.ceil(target * len(same_d)) - 1, 0)])


def retrieval_metrics(emb: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                      block: int = 1024) -> dict[str, float]:
    """P@1, recall@k, R-precision and MAP@R from one blocked neighbour pass (Musgrave et al. 2020).

    Each item queries all others. R is the number of other items with the query's label; queries
    with R = 0 cannot retrieve anything right and are skipped by every metric here.

    Args:
        emb: (N, D) embeddings.
        labels: (N,) identities, ints or strings.
        ks: cut-offs for recall@k (fraction of queries with a same-label item among their k nearest).

    Returns:
        {"precision_at_1", "recall_at_{k}" per k, "r_precision", "map_at_r", "queries"}.
    """
    emb = _as_embeddings(emb)
    codes, counts = _encode(labels, len(emb))
    r_all = counts[codes] - 1
    if not r_all.any() or min(ks) < 1:
        raise ValueError("retrieval needs a label with 2+ items and cut-offs k >= 1")
    k = min(len(emb) - 1, max(int(r_all.max()), *ks))
    sums = dict.fromkeys(["precision_at_1"] + [f"recall_at_{x}" for x in ks] + ["r_precision", "map_at_r"], 0.0)
    rank = np.arange(1, k + 1)
    for start, _, idx in _knn_blocks(emb, k, True, block):
        r = r_all[start:start + len(idx)]
        keep = r > 0
        r = r[keep]
        hits = codes[idx[keep]] == codes[start:start + len(idx)][keep, None]
        sums["precision_at_1"] += hits[:, 0].sum()
        for x in ks:
            sums[f"recall_at_{x}"] += hits[:, :x].any(axis=1).sum()
        in_r = hits & (rank <= r[:, None])
        sums["r_precision"] += (in_r.sum(axis=1) / r).sum()
        sums["map_at_r"] += ((np.cumsum(hits, axis=1) / rank * in_r).sum(axis=1) / r).sum()
    n = int((r_all > 0).sum())
    return {key: float(v / n) for key, v in sums.items()} | {"queries": n}


def precision_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of queries (with R > 0) whose nearest other item shares their label."""
    return retrieval_metrics(emb, labels, ks=(1,))["precision_at_1"]


def _episode_labels(eligible: np.ndarray, label_groups: np.ndarray | None, ways: int, episodes: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(episodes, ways) label codes: any `ways` eligible labels, or all from one group (one alphabet) when grouped.

    Raises:
        ValueError: no group holds `ways` eligible labels.
    """
    if label_groups is None:
        return eligible[np.stack([rng.choice(len(eligible), size=ways, replace=False) for _ in range(episodes)])]
    pools = [p for g in np.unique(label_groups[eligible]) if len(p := eligible[label_groups[eligible] == g]) >= ways]
    if not pools:
        raise ValueError(f"{ways}-way one-shot within groups needs a group with {ways} labels of 2+ items; "
                         f"the largest has {np.unique(label_groups[eligible], return_counts=True)[1].max()}")
    return np.stack([rng.choice(pools[k], size=ways, replace=False) for k in rng.integers(0, len(pools), episodes)])


def one_shot_accuracy(emb: np.ndarray, labels: np.ndarray, ways: int = 20, episodes: int = 400,
                      seed: int = 0, groups: np.ndarray | None = None) -> float:
    """N-way one-shot accuracy: can one example per identity tell which identity a new image shows?

    Each seeded episode draws `ways` labels having 2+ items, one support item per label, and one
    query item (not its support) from one of them; it is right when the nearest support has the
    query's label. With `groups`, an episode's labels all come from one group drawn at random among
    those with `ways` eligible labels: Omniglot's within-alphabet episodes (Lake et al. 2015).

    Args:
        emb: (N, D) embeddings.
        labels: (N,) identities, ints or strings.
        groups: (N,) the group of each item (e.g. its alphabet), the same for every item of a label.

    Returns:
        Fraction of episodes answered right; chance is 1 / ways.
    """
    emb = _as_embeddings(emb)
    codes, counts = _encode(labels, len(emb))
    eligible = np.flatnonzero(counts >= 2)
    if ways < 2 or len(eligible) < ways:
        raise ValueError(f"{ways}-way one-shot needs ways >= 2 and at least {ways} labels with 2+ items; "
                         f"found {len(eligible)}")
    label_groups = None
    if groups is not None:
        label_groups = np.zeros(len(counts), dtype=np.int64)
        label_groups[codes] = np.unique(np.asarray(groups), return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    chosen = _episode_labels(eligible, label_groups, ways, episodes, rng)
    size = counts[chosen]  # (episodes, ways)
    a = rng.integers(0, size)
    b = rng.integers(0, size - 1)
    b += b >= a  # a distinct second item of the same label
    target = rng.integers(0, ways, size=episodes)
    support = emb[order[starts[chosen] + a]]  # (episodes, ways, D)
    query = emb[order[starts[chosen] + b][np.arange(episodes), target]]  # (episodes, D)
    diff = support - query[:, None]
    return float((np.einsum("ewd,ewd->ew", diff, diff).argmin(axis=1) == target).mean())


def verification_metrics(emb: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000, seed: int = 0,
                         target_precision: float = 0.99, target_recall: float = TARGET_RECALL,
                         groups: np.ndarray | None = None) -> dict[str, float]:
    """Everything a verification report needs from one seeded pair sample, as plain floats for JSON.

    Args:
        emb: (N, D) embeddings.
        labels: (N,) identities, ints or strings.
        max_pairs: pair budget for `sample_pairs`.
        seed: pair sample seed.
        target_precision: precision the `threshold_at_precision` threshold must reach.
        target_recall: fraction of same pairs within the `threshold_at_recall` threshold.
        groups: (N,) optional; two identities of one group (tiles of one photo, shots of one scene) may
            look alike without being copies, so their pairs count as neither same nor different.

    Returns:
        See pair_metrics.
    """
    i, j, same = sample_pairs(labels, max_pairs, seed)
    if groups is not None:
        groups = np.asarray(groups)
        keep = same | (groups[i] != groups[j])
        i, j, same = i[keep], j[keep], same[keep]
    return pair_metrics(pair_distances(emb, i, j), same, target_precision, target_recall)


def pair_metrics(d: np.ndarray, same: np.ndarray, target_precision: float = 0.99,
                 target_recall: float = TARGET_RECALL) -> dict[str, float]:
    """Verification metrics of pairs already measured (distances d, same-identity flags), as plain floats.

    Returns:
        Flat dict: roc_auc, eer, eer_threshold, tar_at_far_1e-2, tar_at_far_1e-3, threshold_best_f1,
        best_f1, threshold_at_precision, precision_at_threshold, recall_at_threshold,
        target_precision, threshold_at_recall, target_recall, pairs.
    """
    rate, eer_t = eer(d, same)
    t_f1, f1, _, _ = best_f1_threshold(d, same)
    t_p, precision, recall = threshold_at_precision(d, same, target_precision)
    return {"roc_auc": roc_auc(d, same), "eer": rate, "eer_threshold": eer_t,
            "tar_at_far_1e-2": tar_at_far(d, same, 1e-2), "tar_at_far_1e-3": tar_at_far(d, same, 1e-3),
            "threshold_best_f1": t_f1, "best_f1": f1, "threshold_at_precision": t_p,
            "precision_at_threshold": precision, "recall_at_threshold": recall,
            "target_precision": float(target_precision),
            "threshold_at_recall": threshold_at_recall(d, same, target_recall), "target_recall": float(target_recall),
            "pairs": float(len(d))}
