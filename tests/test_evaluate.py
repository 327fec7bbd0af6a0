"""evaluate and calibrate on tiny identity folders with a tiny untrained model."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import add_bad_files, make_identities

from siamsearch.core import metrics
from siamsearch.core.calibration import CALIBRATION_KEYS
from siamsearch.core.checkpoint import load_checkpoint, save_model
from siamsearch.core.config import EncoderConfig, Runtime, TrainConfig
from siamsearch.evaluate import calibrate, evaluate
from siamsearch.core.model import build_encoder
from siamsearch.core.images import scan_images
from siamsearch.training.data import TrainData

RATES = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r", "roc_auc", "eer",
         "tar_at_far_1e-2", "tar_at_far_1e-3", "best_f1", "precision_at_threshold", "recall_at_threshold", "one_shot")



def test_metrics_are_complete_in_range_and_json(identity_dir, model_file):
    result = evaluate(identity_dir, model_file, episodes=50, runtime=Runtime(workers=0))
    m = result.metrics
    assert set(RATES) <= set(m) and {"threshold_best_f1", "threshold_at_precision", "eer_threshold", "ways"} <= set(m)
    assert all(0.0 <= m[k] <= 1.0 for k in RATES), m
    assert 0.0 <= m["threshold_at_precision"] <= 2.0 and 0.0 <= m["threshold_best_f1"] <= 2.0
    assert m["ways"] == 16 and "only 16 identities" in result.notes[0]  # 20-way asked of 16 identities
    assert result.counts == {"images": 96, "identities": 16, "identities_with_pairs": 16, "skipped": 0,
                             "unlabelled": 0}
    assert result.vectors.shape == (96, 16) and len(result.paths) == len(result.labels) == 96
    json.dumps(result.to_dict(), allow_nan=False)


def test_kept_pairs_are_the_pairs_behind_the_metrics(identity_dir, model_file):
    result = evaluate(identity_dir, model_file, ways=4, episodes=20, runtime=Runtime(workers=0))
    assert result.distances.shape == result.same.shape == (int(result.metrics["pairs"]),)
    assert metrics.roc_auc(result.distances, result.same) == pytest.approx(result.metrics["roc_auc"])
    # Oracle: 16 x C(6, 2) = 240 positives fit the budget, so every same-identity pair is kept.
    v = result.vectors.astype(np.float64)
    d = np.linalg.norm(v[:, None] - v[None, :], axis=-1)
    same = result.labels[:, None] == result.labels[None, :]
    brute = d[np.triu(same, k=1)]
    np.testing.assert_allclose(np.sort(result.distances[result.same]), np.sort(brute), atol=1e-5)


def test_bad_and_unlabelled_files_are_counted(identity_dir, model_file):
    bad = add_bad_files(identity_dir)
    shutil.copy(identity_dir / "id01" / "0.png", identity_dir / "loose.png")
    result = evaluate(identity_dir, model_file, ways=4, episodes=20, runtime=Runtime(workers=0))
    assert sorted(f.path for f in result.failures) == sorted(bad)
    assert result.counts["skipped"] == 3 and result.counts["unlabelled"] == 1 and result.counts["images"] == 96
    assert "1 image(s) directly in" in result.notes[0]


def test_few_identities_shrink_or_skip_one_shot(tmp_path, model_file):
    data = make_identities(tmp_path / "two", n_ids=2, per_id=3)
    result = evaluate(data, model_file, runtime=Runtime(workers=0))
    assert result.metrics["ways"] == 2 and not math.isnan(result.metrics["one_shot"])
    one = make_identities(tmp_path / "one", n_ids=1, per_id=3)
    with pytest.raises(ValueError, match="at least 2 identity"):
        evaluate(one, model_file, runtime=Runtime(workers=0))


def test_calibrate_writes_thresholds_and_keeps_the_fingerprint(identity_dir, model_file):
    before = load_checkpoint(model_file)
    cal = calibrate(identity_dir, model_file, target_precision=0.95, runtime=Runtime(workers=0))
    after = load_checkpoint(model_file)
    assert after.fingerprint == before.fingerprint
    assert all(torch.equal(after.state_dict[k], before.state_dict[k]) for k in before.state_dict)
    assert after.calibration == cal
    assert set(CALIBRATION_KEYS) <= set(cal) and cal["source"] == f"calibrate:{identity_dir.resolve()}"
    assert cal["target_precision"] == 0.95
    m = evaluate(identity_dir, model_file, ways=4, episodes=20, target_precision=0.95,
                 runtime=Runtime(workers=0)).metrics
    assert cal["threshold_best_f1"] == m["threshold_best_f1"]  # same seeded pairs, same answer
    assert cal["threshold_at_precision"] == m["threshold_at_precision"]


def test_held_out_measures_exactly_the_identities_training_held_out(identity_dir, tmp_path):
    enc, cfg = EncoderConfig(backbone="small", dim=16, image_size=32), TrainConfig(val_fraction=0.25, seed=3)
    model = tmp_path / "held.pt"
    save_model(model, build_encoder(enc), cfg)
    held = evaluate(identity_dir, model, held_out=True, ways=4, episodes=10, runtime=Runtime(workers=0))
    val = TrainData.load(identity_dir, scan_images(identity_dir), enc, cfg).val
    assert len(held.labels) == len(val.labels) == 4 * 6
    assert set(held.labels) == {p.parent.name for p in val.paths}
    save_model(model, build_encoder(enc))  # no training config: the split is unknown
    with pytest.raises(ValueError, match="held-out"):
        evaluate(identity_dir, model, held_out=True, runtime=Runtime(workers=0))


def test_episodes_within_alphabets_follow_the_model_or_the_option(tmp_path):
    for alphabet, seed in (("Latin", 0), ("Greek", 1)):
        make_identities(tmp_path / "chars" / alphabet, n_ids=8, per_id=3, seed=seed)
    enc, model = EncoderConfig(backbone="small", dim=16, image_size=32), tmp_path / "m.pt"
    save_model(model, build_encoder(enc), TrainConfig(val_fraction=0.5, val_group_depth=1))
    held = evaluate(tmp_path / "chars", model, held_out=True, ways=10, episodes=20, runtime=Runtime(workers=0))
    assert held.metrics["episode_group_depth"] == 1 and held.metrics["ways"] == 8  # one alphabet of 8 held out
    assert any("one folder 1 level(s) down" in n for n in held.notes)
    whole = evaluate(tmp_path / "chars", model, ways=10, episodes=20, runtime=Runtime(workers=0))
    assert whole.metrics["episode_group_depth"] == 0 and whole.metrics["ways"] == 10
    within = evaluate(tmp_path / "chars", model, ways=10, episodes=20, episode_group_depth=1,
                      runtime=Runtime(workers=0))
    assert within.metrics["ways"] == 8 and "measured 8-way" in within.notes[-1]
