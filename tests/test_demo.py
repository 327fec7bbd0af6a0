"""The demo's calibration copies and its scoring of dedup groups against planted copies; the whole demo
run is opt-in (-m slow)."""

import numpy as np
import pytest
from PIL import Image

from siamsearch.demo import score_groups
from siamsearch.core.samples import COPIES, build_copies, save_tiles, tile_files

PLANTED = {"a_jpeg.jpg": "a.png", "b_rotated.jpg": "b.png", "c_resized.jpg": "c.png"}


def member(path, status="duplicate"):
    return {"path": path, "distance": 0.1, "status": status}


def test_score_groups_counts_found_copies_and_wrong_members():
    groups = [
        {"keep": "a.png", "max_distance": 0.1, "members": [member("a_jpeg.jpg")]},  # right
        {"keep": "b.png", "max_distance": 0.4, "members": [member("b_rotated.jpg", "review"),  # right, review
                                                           member("d.png", "review")]},  # wrong, review
        {"keep": "e.png", "max_distance": 0.2, "members": [member("c_resized.jpg")]},  # wrong: c.png not here
    ]
    assert score_groups(groups, PLANTED) == {"planted": 3, "groups": 3, "found": 2, "found_as_duplicate": 1,
                                             "wrong_duplicate": 1, "wrong_review": 1}


def test_build_copies_labels_each_detailed_tile_with_its_copies_and_skips_featureless_ones(tmp_path):
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    textured[:48, :48] = 250  # a blank corner: its "brighter" copy is pure white, like any other blank tile's
    training = tmp_path / "train"
    training.mkdir()
    save_tiles(Image.fromarray(textured), "noise", training, 2)
    folder = build_copies(tile_files(training), tmp_path / "copies", count=10)
    assert sorted(p.name for p in folder.iterdir()) == ["train_noise_01", "train_noise_10", "train_noise_11"]
    expected = ["original.png"] + [f"{kind}.jpg" for kind in COPIES]
    assert all(sorted(p.name for p in tile.iterdir()) == sorted(expected) for tile in folder.iterdir())


@pytest.mark.slow
def test_the_demo_finds_the_planted_copies(demo_run):
    summary = demo_run
    assert all(p.is_file() and p.stat().st_size > 0 for p in summary.files.values())
    assert {"query_html", "query_sheet", "dedup_html", "plot_roc", "plot_distances"} <= set(summary.files)
    assert summary.eval_metrics["precision_at_1"] > 0.8 and summary.query_accuracy > 0.8
    dedup = summary.dedup
    assert dedup["planted"] == 2 * len(COPIES) and dedup["found"] >= 11 and dedup["wrong_duplicate"] <= 1
