"""The calibration's tails and the margin they give a collection of N images."""

import math

import numpy as np
import pytest
from conftest import run_cli as run

from siamsearch.core.calibration import (
    FALSE_PAIRS_PER_1000,
    TAIL,
    calibrated_margin,
    collection_margin,
    distance_tails,
    false_pair_rate,
)


def test_calibrated_margin_is_best_f1_capped_at_the_recall_distance():
    assert calibrated_margin({"threshold_best_f1": 0.7, "threshold_at_recall": 0.6}) == 0.6
    assert calibrated_margin({"threshold_best_f1": 0.7, "threshold_at_recall": 0.9}) == 0.7
    assert calibrated_margin({"threshold_best_f1": 0.7}) == 0.7  # calibrated before the recall distance was stored


def test_tails_hold_every_pair_and_the_smallest_different_ones_exactly():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((700, 8)).astype(np.float32)
    labels = rng.integers(0, 60, 700)
    tails = distance_tails(emb, labels)
    d = np.sqrt(((emb[:, None].astype(np.float64) - emb[None]) ** 2).sum(-1))
    upper = np.triu(np.ones_like(d, bool), 1)
    same = labels[:, None] == labels[None]
    assert tails["different_pairs"] == (upper & ~same).sum() and tails["same_pairs"] == (upper & same).sum()
    np.testing.assert_allclose(tails["different_low"], np.sort(d[upper & ~same])[:TAIL], atol=1e-4)
    np.testing.assert_allclose(tails["same_quantiles"], np.quantile(d[upper & same], np.linspace(0, 1, 101)), atol=1e-4)


def test_pairs_within_a_group_are_neither_same_nor_different():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    labels = np.array([f"photo{i % 5}/tile{i % 30}" for i in range(300)])
    groups = np.array([label.split("/")[0] for label in labels])
    tails = distance_tails(emb, labels, groups=groups)
    d = np.sqrt(((emb[:, None].astype(np.float64) - emb[None]) ** 2).sum(-1))
    upper = np.triu(np.ones_like(d, bool), 1)
    across = groups[:, None] != groups[None]
    assert tails["different_pairs"] == (upper & across).sum() < (upper & (labels[:, None] != labels[None])).sum()
    np.testing.assert_allclose(tails["different_low"], np.sort(d[upper & across])[:TAIL], atol=1e-4)
    assert tails["same_pairs"] == (upper & (labels[:, None] == labels[None])).sum()
    # verification pairs drop the within-group different pairs the same way
    from siamsearch.core.metrics import verification_metrics
    one_point_per_photo = np.eye(8, dtype=np.float32)[np.unique(groups, return_inverse=True)[1]]
    assert verification_metrics(one_point_per_photo, labels, groups=groups)["roc_auc"] == 1.0
    assert verification_metrics(one_point_per_photo, labels)["roc_auc"] < 1.0  # tiles of one photo tie with copies


def test_calibrate_group_depth_counts_only_pairs_across_groups(identity_dir, model_file, tmp_path):
    import shutil

    grouped = tmp_path / "grouped"
    for i, person in enumerate(sorted(identity_dir.iterdir())):
        shutil.copytree(person, grouped / f"group{i % 4}" / person.name)
    flat = run("calibrate", grouped, "--model", model_file, "--workers", 0, "--json")
    by_group = run("calibrate", grouped, "--model", model_file, "--workers", 0, "--group-depth", 1, "--json")
    assert flat.exit_code == 0 and by_group.exit_code == 0, by_group.output
    import json
    flat, by_group = json.loads(flat.stdout), json.loads(by_group.stdout)
    assert by_group["group_depth"] == 1 and flat["group_depth"] == 0
    n = 16 * 6
    assert flat["tails"]["different_pairs"] == n * (n - 1) // 2 - 16 * 15
    assert by_group["tails"]["different_pairs"] == n * (n - 1) // 2 - 4 * (24 * 23 // 2)
    res = run("calibrate", grouped, "--model", model_file, "--workers", 0, "--group-depth", 2)
    assert res.exit_code == 2 and "--group-depth 2 needs identities at least 3 folders deep" in res.stderr


def synthetic_calibration(seed: int = 0, measured: int = 200_000) -> dict:
    """Copies at N(0.3, 0.08), distinct images at N(1.2, 0.15): tails as calibration stores them."""
    rng = np.random.default_rng(seed)
    different = np.sort(rng.normal(1.2, 0.15, measured))
    same = rng.normal(0.3, 0.08, 5000)
    return {"threshold_best_f1": 0.75, "tails": {
        "different_pairs": measured, "different_low": different[:TAIL].tolist(), "same_pairs": len(same),
        "same_quantiles": np.quantile(same, np.linspace(0, 1, 101)).tolist()}}


def true_false_pairs(margin: float, n: int) -> float:
    """Expected false pairs among n images under the true N(1.2, 0.15) distance of distinct images."""
    return 0.5 * (1 + math.erf((margin - 1.2) / (0.15 * math.sqrt(2)))) * n * (n - 1) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_margin_keeps_expected_false_pairs_within_budget_and_shrinks_as_the_collection_grows(seed):
    cal = synthetic_calibration(seed)
    sizes = (100, 1_000, 10_000, 100_000, 1_000_000, 100_000_000)
    choices = [collection_margin(cal, n) for n in sizes]
    margins = [c.margin for c in choices]
    assert all(a > b for a, b in zip(margins, margins[1:])), margins
    for n, c in zip(sizes, choices):
        budget = FALSE_PAIRS_PER_1000 * n / 1000
        assert c.expected_false_pairs <= budget * (1 + 1e-6), (n, c)
        assert true_false_pairs(c.margin, n) <= 3 * budget, (n, c)  # the estimate holds against the truth
        assert c.margin <= calibrated_margin(cal)
    recalls = [c.expected_recall for c in choices]
    assert all(a >= b for a, b in zip(recalls, recalls[1:])) and recalls[2] > 0.9  # 10,000 images: still most copies
    assert choices[-1].rule == "collection, extrapolated"
    assert collection_margin(cal | {"threshold_best_f1": 1.0}, 100, 100.0).rule == "collection"  # counted, not fitted


def test_a_larger_budget_allows_a_looser_margin_and_a_tiny_collection_keeps_the_balanced_cap():
    cal = synthetic_calibration()
    assert collection_margin(cal, 10_000, 10.0).margin > collection_margin(cal, 10_000, 1.0).margin
    loose = {"threshold_best_f1": 0.5, "tails": synthetic_calibration()["tails"]}
    assert collection_margin(loose, 10) == collection_margin(loose, 10)  # deterministic
    assert collection_margin(loose, 10).margin <= 0.5
    assert false_pair_rate(cal["tails"], 0.0) < 1e-6
    assert collection_margin({"threshold_best_f1": 0.4}, 10_000).rule == "best F1"  # older files: no tails


def test_an_identity_model_needs_an_explicit_margin_to_move_files(identity_dir, tmp_path):
    import torch

    from siamsearch.core.checkpoint import save_model
    from siamsearch.core.config import EncoderConfig, TrainConfig
    from siamsearch.index.indexing import index_folder
    from siamsearch.core.model import build_encoder

    torch.manual_seed(0)
    model = tmp_path / "faces.pt"
    save_model(model, build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)), TrainConfig(),
               calibration={"threshold_best_f1": 0.5, "purpose": "identities"})
    index_folder(identity_dir, tmp_path / "idx", model)[0].close()
    res = run("dedup", "--index", tmp_path / "idx", "--json")
    assert res.exit_code == 0 and '"purpose": "identities"' in res.stdout
    res = run("dedup", "--index", tmp_path / "idx", "--move-to", tmp_path / "dups", "--yes")
    assert res.exit_code == 3 and "explicit --margin" in res.stderr and not (tmp_path / "dups").exists()
    res = run("dedup", "--index", tmp_path / "idx", "--move-to", tmp_path / "dups", "--margin", 0.01)
    assert res.exit_code == 0, res.output
