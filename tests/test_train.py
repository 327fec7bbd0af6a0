"""A few seconds of real training on tiny synthetic identities, resume, bad files, and the CLI."""

import dataclasses
import math

import pytest
import torch
from conftest import make_identities
from typer.testing import CliRunner

from siamsearch.checkpoint import load_checkpoint, load_encoder
from siamsearch.cli import app
from siamsearch.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig
from siamsearch.model import build_encoder
from siamsearch.train import Quiet, resume_path_for, train, validate
from siamsearch.trainset import load_data, val_views

ENC = EncoderConfig(backbone="small", dim=32, image_size=32, channels=3)
CFG = TrainConfig(epochs=4, ids_per_batch=8, images_per_id=3, lr=3e-3, val_fraction=0.25, ways=4, episodes=100,
                  augment=AUGMENT_PRESETS["none"], hinge=1.0)


def test_training_separates_unseen_identities(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    result = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=6))
    data = load_data(identity_dir, ENC, CFG)
    images, labels = val_views(data, ENC, CFG)
    torch.manual_seed(0)
    untrained = validate(build_encoder(ENC), images, labels, CFG, torch.device("cpu"))
    best = result.best
    assert best["roc_auc"] >= 0.9 and best["roc_auc"] > untrained["roc_auc"] + 0.05
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    ckpt = load_checkpoint(out)
    assert len(ckpt.history) == 6 and ckpt.fingerprint == result.fingerprint
    assert 0 < ckpt.calibration["threshold_best_f1"] < 2 and ckpt.calibration["target_precision"] == 0.99


def test_bad_files_are_skipped_and_counted(identity_dir, bad_files, tmp_path):
    result = train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=1, val_fraction=0.5))
    assert sorted(f.path for f in result.failures) == sorted(bad_files)
    assert all(f.reason for f in result.failures)


def test_time_budget_stops_and_keeps_best(identity_dir, tmp_path):
    result = train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=50, max_minutes=1e-4))
    assert result.stopped == "time budget" and len(result.history) == 1
    assert (tmp_path / "m.pt").exists()


def test_resume_continues_from_the_saved_epoch(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=2))
    assert resume_path_for(out).exists()
    result = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=3), resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resume_takes_the_runtime_given_now_not_the_stored_one(identity_dir, tmp_path, monkeypatch):
    import siamsearch.trainset as ts
    real, asked = ts.decode_images, []

    def spy(paths, sizes, channels, workers):
        asked.append(workers)
        return real(paths, sizes, channels, 0)  # no process pool: only the request matters

    monkeypatch.setattr(ts, "decode_images", spy)
    out = tmp_path / "m.pt"
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1), Runtime(device="cpu", workers=0))
    state = torch.load(resume_path_for(out), weights_only=True)
    assert not {"workers", "device", "amp", "cache_gb"} & set(state["train"])
    assert set(asked) == {0}
    asked.clear()
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=2), Runtime(device="cpu", workers=3), resume=True)
    assert set(asked) == {3}


def test_a_resumed_run_that_does_not_improve_reports_the_saved_fingerprint(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    first = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1))
    again = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1), resume=True)  # no epoch left
    assert again.fingerprint == first.fingerprint == load_checkpoint(out).fingerprint


def test_interrupt_saves_state_that_resume_continues(identity_dir, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    import siamsearch.train as tr
    real = tr.augment_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # second epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "augment_batch", flaky)
    result = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=3))
    assert result.stopped == "interrupted" and len(result.history) == 1
    monkeypatch.setattr(tr, "augment_batch", real)
    resumed = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=3), resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_self_supervised_on_a_flat_folder(tmp_path, identity_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(identity_dir.rglob("*.png"))[:40]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    cfg = dataclasses.replace(CFG, epochs=2, augment=AUGMENT_PRESETS["photos"])
    result = train(flat, tmp_path / "ss.pt", ENC, cfg)
    assert result.best["roc_auc"] > 0.5 and not math.isnan(result.best["p_at_1"])
    assert load_data(flat, ENC, cfg).self_supervised


def test_cli_train_prints_epochs_and_writes_a_model(identity_dir, tmp_path):
    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(app, ["train", str(identity_dir), "--out", str(out), "--image-size", "32",
                                   "--epochs", "2", "-P", "8", "-K", "3", "--augment", "none", "--dim", "16",
                                   "--standardize"])
    assert res.exit_code == 0, res.output
    assert "epoch 2" in res.output and "parameters train" in res.output and out.exists()
    model, ckpt = load_encoder(out)
    assert ckpt.encoder.dim == 16 and ckpt.encoder.standardize
    assert ckpt.train.augment == AUGMENT_PRESETS["none"] and ckpt.train.hinge is None


def test_cli_train_takes_the_old_margin_flag_as_the_hinge(identity_dir, tmp_path):
    common = ["train", str(identity_dir), "--image-size", "32", "--epochs", "1", "-P", "8", "-K", "3", "--dim", "8"]
    for flag, value in (("--margin", "0.7"), ("--hinge", "0.6")):
        out = tmp_path / f"{flag[2:]}.pt"
        res = CliRunner().invoke(app, [*common, "--out", str(out), "--loss", "triplet", flag, value])
        assert res.exit_code == 0, res.output
        assert load_checkpoint(out).train.hinge == float(value)
    assert "--margin" not in CliRunner().invoke(app, ["train", "--help"]).output


@pytest.mark.parametrize("args,match", [
    (["--backbone", "vgg"], "unknown backbone"),
    (["--unfreeze", "x"], "EPOCH:NAME"),
    (["--augment", "wild"], "unknown --augment"),
])
def test_cli_train_rejects_bad_options_in_one_line(identity_dir, tmp_path, args, match):
    res = CliRunner().invoke(app, ["train", str(identity_dir), "--out", str(tmp_path / "m.pt"), *args])
    assert res.exit_code == 2 and match in res.output


def test_cli_train_missing_folder(tmp_path):
    res = CliRunner().invoke(app, ["train", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.output


class Messages(Quiet):
    """An observer that keeps the lines training reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_two_identities_train_on_everything_with_a_warning(tmp_path):
    two = make_identities(tmp_path / "two", n_ids=2, per_id=4)
    obs = Messages()
    result = train(two, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=2), observer=obs)
    assert any("nothing held out" in line and "last epoch" in line for line in obs.lines)
    assert result.best["epoch"] == 2 and (tmp_path / "m.pt").exists()
