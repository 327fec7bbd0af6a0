"""Metrics against hand-worked cases, brute-force oracles on tiny data, and reference implementations."""

import json

import numpy as np
import pytest

from siamsearch.core import metrics as m

# A 3 + 3 verification case worked by hand (a tie at 0.3 between a same and a different pair).
D = np.array([0.1, 0.3, 0.4, 0.3, 0.5, 0.8])
S = np.array([True, True, True, False, False, False])


def grid_points(n: int, dim: int, seed: int) -> np.ndarray:
    """Small-integer points: float32 distances are exact, so ties are real and orders are exact."""
    return np.random.default_rng(seed).integers(-2, 3, size=(n, dim)).astype(np.float32)


def sq_dist_oracle(x: np.ndarray) -> np.ndarray:
    """Full (N, N) squared distances in float64, independent of the code under test."""
    x = x.astype(np.float64)
    return ((x[:, None] - x[None]) ** 2).sum(-1)


def ranked_oracle(x: np.ndarray) -> np.ndarray:
    """(N, N-1) neighbour order from a full matrix: self excluded, ties by index."""
    d = sq_dist_oracle(x)
    order = np.argsort(d, axis=1, kind="stable")
    return np.array([row[row != i] for i, row in enumerate(order)])


def test_pairwise_distances_match_float64_and_never_nan():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 64)).astype(np.float32), rng.normal(size=(4, 64)).astype(np.float32)
    d = m.pairwise_distances(a, b)
    assert d.dtype == np.float32 and d.shape == (20, 4)
    np.testing.assert_allclose(d, np.sqrt(((a[:, None].astype(float) - b[None]) ** 2).sum(-1)), rtol=1e-5)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)  # |a|²+|a|²-2a·a rounds below 0 for some rows
    self_d = np.diag(m.pairwise_distances(unit, unit))
    assert not np.isnan(self_d).any() and (self_d < 1e-3).all()


@pytest.mark.parametrize("exclude_self", [True, False])
def test_blocked_neighbours_equal_full_matrix_argsort_with_ties_by_index(exclude_self):
    x = grid_points(50, 3, seed=1)  # 125 grid cells, 50 points: duplicates and many equal distances
    d = sq_dist_oracle(x)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :9]
    dist, idx = m.nearest_neighbors(x, k=9, exclude_self=exclude_self, block=7)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.sqrt(np.take_along_axis(d, expected, 1)), rtol=1e-6)


def test_neighbours_reject_impossible_k():
    with pytest.raises(ValueError, match="k=5"):
        m.nearest_neighbors(np.eye(5, dtype=np.float32), k=5)


def test_sample_pairs_takes_all_positives_when_few_and_handles_singletons():
    labels = np.array(["a", "a", "a", "b", "b", "c"])  # "c" has a single image
    i, j, same = m.sample_pairs(labels, max_pairs=100, seed=0)
    pos = {tuple(sorted(p)) for p in zip(i[same], j[same])}
    assert pos == {(0, 1), (0, 2), (1, 2), (3, 4)} and same.sum() == 4
    assert (~same).sum() == 4
    assert (labels[i[~same]] != labels[j[~same]]).all() and (i != j).all()


def test_sample_pairs_samples_distinct_positives_reproducibly():
    labels = np.repeat(np.arange(5), 20)  # 5 x 190 = 950 positive pairs
    i, j, same = m.sample_pairs(labels, max_pairs=200, seed=3)
    assert same.sum() == 100 and (~same).sum() == 100
    assert (labels[i] == labels[j]).tolist() == same.tolist() and (i != j).all()
    assert len({tuple(sorted(p)) for p in zip(i[same], j[same])}) == 100
    again = m.sample_pairs(labels, max_pairs=200, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip((i, j, same), again))
    assert not np.array_equal(i, m.sample_pairs(labels, max_pairs=200, seed=4)[0])


def test_sample_pairs_negatives_with_one_dominant_label():
    labels = np.array([0] * 999 + [1])  # only pairs with item 999 are negatives
    i, j, same = m.sample_pairs(labels, max_pairs=1000, seed=0)
    assert same.sum() == 500
    assert ((i[~same] == 999) ^ (j[~same] == 999)).all()
    assert 0.4 < (i[~same] == 999).mean() < 0.6  # uniform over ordered pairs: 999 first half the time
    with pytest.raises(ValueError, match="2 identities"):
        m.sample_pairs(np.zeros(4), max_pairs=10, seed=0)


def test_roc_auc_hand_cases():
    assert m.roc_auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 1.0
    assert m.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 0.0
    assert m.roc_auc([0.5] * 6, S) == 0.5
    # Same pairs 0.1, 0.3, 0.4 vs different 0.3, 0.5, 0.8: 0.1 beats 3, 0.4 beats 2,
    # 0.3 beats 2 and ties 1 (half) → 7.5 / 9.
    assert m.roc_auc(D, S) == pytest.approx(7.5 / 9)
    with pytest.raises(ValueError):
        m.roc_auc([0.1, 0.2], [True, True])


def test_roc_auc_equals_pair_counting_oracle_with_ties():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 12, size=300).astype(float)
    s = rng.random(300) < 0.3 + 0.04 * (12 - d)  # informative, with many ties
    pos, neg = d[s], d[~s]
    oracle = ((pos[:, None] < neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert m.roc_auc(d, s) == pytest.approx(oracle, abs=1e-12)
    far, tar, t = m.roc_curve(d, s)  # trapezoid area under the curve is the same number
    assert np.all(np.diff(t) > 0) and (far[0], tar[0], far[-1], tar[-1]) == (0, 0, 1, 1)
    assert np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2) == pytest.approx(oracle, abs=1e-12)


def test_roc_curve_hand_case():
    far, tar, t = m.roc_curve(D, S)
    np.testing.assert_array_equal(t, [-np.inf, 0.1, 0.3, 0.4, 0.5, 0.8])
    np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_eer_and_tar_at_far_hand_case():
    # At t = 0.3: 2 of 3 same accepted (FRR 1/3), 1 of 3 different accepted (FAR 1/3).
    rate, t = m.eer(D, S)
    assert rate == pytest.approx(1 / 3) and t == 0.3
    # Same 0.1, 0.2 vs different 0.15, 0.3, 0.4: |FAR - FRR| is 1/2, 1/6, 1/3, ... → t = 0.15, EER (1/3 + 1/2) / 2.
    rate, t = m.eer([0.1, 0.2, 0.15, 0.3, 0.4], [True, True, False, False, False])
    assert rate == pytest.approx(5 / 12) and t == 0.15
    assert m.tar_at_far(D, S, 0.0) == pytest.approx(1 / 3)  # t = 0.1
    assert m.tar_at_far(D, S, 0.34) == 1.0  # t = 0.4 accepts one different pair of three
    assert m.tar_at_far([0.5, 0.1], [True, False], 1e-3) == 0.0  # only "accept nothing" qualifies


def test_best_f1_threshold_hand_case():
    # F1 = 2tp / (tp + fp + 3) at t = 0.1, 0.3, 0.4, 0.5, 0.8: 2/4, 4/6, 6/7, 6/8, 6/9.
    t, f1, precision, recall = m.best_f1_threshold(D, S)
    assert (t, recall) == (0.4, 1.0)
    assert f1 == pytest.approx(6 / 7) and precision == pytest.approx(3 / 4)


def test_threshold_at_precision_takes_the_largest_qualifying_threshold():
    # Precision at t = 0.1, 0.3, 0.4, 0.5, 0.8: 1, 2/3, 3/4, 3/5, 1/2 (not monotone).
    assert m.threshold_at_precision(D, S, 0.7) == (0.4, 0.75, 1.0)  # not 0.1, where it first dips
    t, precision, recall = m.threshold_at_precision(D, S, 0.99)
    assert (t, precision) == (0.1, 1.0) and recall == pytest.approx(1 / 3)
    # Unreachable: precision 0, 1/2, 1/3, 1/2 → the largest of the best, below target, is returned.
    assert m.threshold_at_precision([0.1, 0.2, 0.3, 0.4], [False, True, False, True], 0.99) == (0.4, 0.5, 1.0)


def test_threshold_at_recall_is_the_smallest_distance_holding_the_share_of_same_pairs():
    # Same pairs at 0.1, 0.3, 0.4; the different ones (0.3, 0.5, 0.8) play no part.
    shares = (0.2, 1 / 3, 0.5, 2 / 3, 0.7, 1.0)
    assert [m.threshold_at_recall(D, S, r) for r in shares] == [0.1, 0.1, 0.3, 0.3, 0.4, 0.4]
    rng = np.random.default_rng(0)
    d, s = rng.random(500), rng.random(500) < 0.3
    for r in (0.5, 0.9, 0.975, 0.99):
        assert m.threshold_at_recall(d, s, r) == np.quantile(d[s], r, method="inverted_cdf")
        assert (d[s] <= m.threshold_at_recall(d, s, r)).mean() >= r
    with pytest.raises(ValueError, match="target recall"):
        m.threshold_at_recall(D, S, 1.5)


def test_map_at_r_hand_case():
    # Points on a line; label A has 4 items (R = 3), the others are singletons (skipped as queries).
    x = np.array([0, 2, 3.5, 7.5, 1.2, 5.2], dtype=np.float32)[:, None]
    labels = np.array(["A", "A", "A", "A", "u", "v"])
    # Query 0:   u 1.2, A 2,   A 3.5 → ✗✓✓: MAP (0 + 1/2 + 2/3)/3 = 7/18, R-precision 2/3
    # Query 2:   u 0.8, A 1.5, A 2   → ✗✓✓: 7/18, 2/3
    # Query 3.5: A 1.5, v 1.7, u 2.3 → ✓✗✗: 1/3, 1/3
    # Query 7.5: v 2.3, A 4,   A 5.5 → ✗✓✓: 7/18, 2/3
    out = m.retrieval_metrics(x, labels, ks=(1, 2))
    assert out["map_at_r"] == pytest.approx((3 * 7 / 18 + 1 / 3) / 4)  # 3/8
    assert out["r_precision"] == pytest.approx((3 * 2 / 3 + 1 / 3) / 4)  # 7/12
    assert out["precision_at_1"] == out["recall_at_1"] == 0.25
    assert out["recall_at_2"] == 1.0 and out["queries"] == 4


@pytest.mark.parametrize("dim", [3, 8])
def test_retrieval_metrics_equal_brute_force(dim):
    rng = np.random.default_rng(dim)
    x = grid_points(200, dim, seed=dim)
    labels = np.concatenate([rng.integers(0, 30, 190), np.arange(100, 110)])  # 10 singletons
    ranked = ranked_oracle(x)
    hits = labels[ranked] == labels[:, None]
    r = (labels[None] == labels[:, None]).sum(1) - 1
    q = r > 0
    rp = [hits[i, :r[i]].mean() for i in np.flatnonzero(q)]
    ap = [sum(hits[i, :j + 1].mean() for j in range(r[i]) if hits[i, j]) / r[i] for i in np.flatnonzero(q)]
    out = m.retrieval_metrics(x, labels, ks=(1, 5, 10), block=32)
    assert out["precision_at_1"] == pytest.approx(hits[q, 0].mean())
    for k in (1, 5, 10):
        assert out[f"recall_at_{k}"] == pytest.approx(hits[q, :k].any(1).mean())
    assert out["r_precision"] == pytest.approx(np.mean(rp))
    assert out["map_at_r"] == pytest.approx(np.mean(ap))
    assert m.precision_at_1(x, labels) == out["precision_at_1"]


def clusters(n_ids: int, per_id: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors scattered around random unit centres, one centre per identity."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 16))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), per_id, 0)
    x = x + rng.normal(scale=noise, size=x.shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n_ids), per_id)


def test_one_shot_accuracy_separated_random_and_deterministic():
    x, labels = clusters(30, 4, noise=0.01, seed=0)
    assert m.one_shot_accuracy(x, labels, ways=20, episodes=200) == 1.0
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(labels)  # labels unrelated to the vectors: chance is 1/5
    acc = m.one_shot_accuracy(x, shuffled, ways=5, episodes=1000, seed=2)
    assert 0.13 < acc < 0.27
    assert m.one_shot_accuracy(x, shuffled, ways=5, episodes=1000, seed=2) == acc


def test_one_shot_needs_enough_labels_with_two_items():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5])  # three labels with 2+ items
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="at least 5 labels with 2\\+ items; found 3"):
        m.one_shot_accuracy(x, labels, ways=5)


def test_verification_metrics_are_plain_floats_and_perfect_on_separated_clusters():
    x, labels = clusters(10, 5, noise=0.01, seed=0)
    out = m.verification_metrics(x, labels, max_pairs=1000)
    assert json.loads(json.dumps(out)) == out and all(type(v) is float for v in out.values())
    assert out["roc_auc"] == 1.0 and out["eer"] == 0.0 and out["tar_at_far_1e-3"] == 1.0
    assert out["best_f1"] == 1.0 and out["recall_at_threshold"] == 1.0
    assert out["precision_at_threshold"] == 100 / 101  # the largest threshold at 99%: one different pair in
    assert out["pairs"] == 200  # all 10 x 10 positives and as many negatives


# --- Against reference implementations: scikit-learn (verification), pytorch-metric-learning (retrieval) ---


TIE_BREAKS = {  # hand-sized cases where the documented tie-breaking rules decide the answer
    "f1_tie": ([1.0, 2, 3, 4], [True, False, False, True]),  # best F1 2/3 at t = 1 and at t = 4
    "precision_tie": ([1.0, 2, 3, 4], [False, True, False, True]),  # best precision 1/2 at t = 2 and t = 4
}


def verification_case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, same): a tie-break case, "ties" on a 12-step integer grid, or float32 distances of sampled pairs."""
    if kind in TIE_BREAKS:
        return tuple(np.array(v) for v in TIE_BREAKS[kind])
    rng = np.random.default_rng(seed)
    if kind == "ties":
        d = rng.integers(0, 12, size=400).astype(np.float64)
        return d, rng.random(400) < 0.1 + 0.06 * (12 - d)  # informative, far from perfect
    x, labels = clusters(25, 6, noise=0.25, seed=seed)
    i, j, same = m.sample_pairs(labels, max_pairs=600, seed=seed)
    return m.pair_distances(x, i, j), same


VERIFICATION_CASES = [(k, 0) for k in TIE_BREAKS] + [(k, seed) for k in ("ties", "pairs") for seed in (0, 1, 2)]


@pytest.mark.parametrize("kind, seed", VERIFICATION_CASES)
def test_roc_auc_and_curve_equal_sklearn(kind, seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the ROC reference (test extra)")
    d, s = verification_case(kind, seed)
    # sklearn ranks scores, higher = positive: score -d accepts "-d >= -t", i.e. our "d <= t".
    assert m.roc_auc(d, s) == pytest.approx(skm.roc_auc_score(s, -d), abs=1e-12)
    fpr, tpr, thr = skm.roc_curve(s, -d, drop_intermediate=False)  # ours keeps every observed threshold
    far, tar, t = m.roc_curve(d, s)
    np.testing.assert_array_equal(t, -thr)  # both start at "accept nothing": -inf for us, +inf for sklearn
    np.testing.assert_allclose(far, fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tar, tpr, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind, seed", VERIFICATION_CASES)
def test_eer_and_tar_at_far_equal_their_definitions_on_the_sklearn_curve(kind, seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the ROC reference (test extra)")
    d, s = verification_case(kind, seed)
    fpr, tpr, thr = skm.roc_curve(s, -d, drop_intermediate=False)
    fnr = 1 - tpr
    # sklearn has no EER, and the usual interpolated crossing differs by design: ours is the mean of FAR
    # and FRR at the observed threshold where they are closest (first such, the accept-nothing point excluded).
    k = 1 + int(np.argmin(np.abs(fpr[1:] - fnr[1:])))
    rate, t = m.eer(d, s)
    assert t == -thr[k] and rate == pytest.approx((fpr[k] + fnr[k]) / 2, abs=1e-15)
    for far in (0.0, 1e-3, 1e-2, 0.1, 0.5):  # TAR@FAR: the highest TPR at FPR <= far on the full curve
        assert m.tar_at_far(d, s, far) == tpr[fpr <= far].max()


@pytest.mark.parametrize("kind, seed", VERIFICATION_CASES)
def test_best_f1_and_threshold_at_precision_equal_sklearn(kind, seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the F1/PR reference (test extra)")
    d, s = verification_case(kind, seed)
    prec, rec, thr = skm.precision_recall_curve(s, -d, drop_intermediate=False)
    prec, rec, t = prec[:-1], rec[:-1], -thr  # drop sklearn's (1, 0) end point, which has no threshold
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(prec), where=prec + rec > 0)
    t_f1, best, precision, recall = m.best_f1_threshold(d, s)
    assert best == pytest.approx(f1.max(), rel=1e-12)
    assert t_f1 == t[np.isclose(f1, f1.max(), rtol=1e-12, atol=0)].min()  # smallest threshold on ties
    accept = d <= t_f1  # and sklearn's own scores of that decision
    assert best == pytest.approx(skm.f1_score(s, accept), rel=1e-12)
    assert precision == pytest.approx(skm.precision_score(s, accept), rel=1e-12)
    assert recall == pytest.approx(skm.recall_score(s, accept), rel=1e-12)
    for target in (0.5, 0.7, 0.9, 0.99, 1.0):
        ok = prec >= target  # the largest qualifying threshold; if none, the largest of best precision
        expected = t[ok].max() if ok.any() else t[prec == prec.max()].max()
        k = int(np.flatnonzero(t == expected)[0])
        assert m.threshold_at_precision(d, s, target) == (expected, prec[k], rec[k])


def retrieval_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """~180 unit vectors in 8-D: 40 identities of 1-8 items, singletons being queries with R = 0.

    Noisy enough that P@1, R-precision and MAP@R land well inside (0, 1).
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(40), rng.integers(1, 9, size=40))
    centres = rng.normal(size=(40, 8))
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    x = x + rng.normal(scale=0.3, size=x.shape)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    # No near-ties among the neighbours that count, so float32 rounding in FAISS and here agrees on order.
    d2 = sq_dist_oracle(x)
    np.fill_diagonal(d2, np.inf)
    nearest = np.sort(d2, axis=1)[:, :np.bincount(labels).max()]
    assert np.diff(nearest, axis=1).min() > 1e-6
    return x, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_retrieval_metrics_equal_pytorch_metric_learning(seed):
    pytest.importorskip("pytorch_metric_learning", reason="Musgrave et al.'s reference metrics (test extra)")
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator  # kNN by FAISS, CPU here
    from pytorch_metric_learning.utils.inference import FaissKNN

    x, labels = retrieval_case(seed)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    ref = calc.get_accuracy(x, labels, x, labels, ref_includes_query=True)  # each item queries all others
    out = m.retrieval_metrics(x, labels, ks=(1, 3, 10), block=50)
    assert 0.1 < out["map_at_r"] < out["precision_at_1"] < 0.9  # informative, not saturated
    assert out["precision_at_1"] == out["recall_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-12)
    assert out["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-12)
    assert out["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-12)
    # PML has no recall@k: count it on the reference's own FAISS neighbours (self removed, as above).
    _, idx = FaissKNN()(torch.from_numpy(x), 10, torch.from_numpy(x), ref_includes_query=True)
    hits = labels[idx.numpy()] == labels[:, None]
    query = np.bincount(labels)[labels] > 1
    assert out["queries"] == query.sum()
    for k in (3, 10):
        assert out[f"recall_at_{k}"] == pytest.approx(hits[query, :k].any(axis=1).mean(), abs=1e-12)


def test_one_shot_within_groups_draws_every_episode_from_one_group():
    x, labels = clusters(30, 4, noise=0.01, seed=0)
    # Group "a" (labels 0-19) is cleanly separated; group "b" (20-29) sits on label 0's centre, so any episode
    # mixing the groups can confuse 0 with b. Within groups, b (10 labels) cannot host 20-way: all episodes are a's.
    x[labels >= 20] = x[labels == 0][0]
    groups = np.where(labels < 20, "a", "b")
    assert m.one_shot_accuracy(x, labels, ways=20, episodes=300, groups=groups) == 1.0
    assert m.one_shot_accuracy(x, labels, ways=20, episodes=300) < 1.0
    assert m.one_shot_accuracy(x, labels, ways=5, episodes=300, seed=1, groups=groups) < 1.0  # b hosts 5-way
    with pytest.raises(ValueError, match="needs a group with 25 labels of 2\\+ items; the largest has 20"):
        m.one_shot_accuracy(x, labels, ways=25, groups=groups)
