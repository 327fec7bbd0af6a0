"""Checkpoints describe themselves, load safely and give identical embeddings."""

import pytest
import torch

from siamsearch.core.checkpoint import (
    CheckpointError,
    fingerprint,
    load_checkpoint,
    load_encoder,
    save_model,
    update_model_file,
)
from siamsearch.core.config import AUGMENT_PRESETS, EncoderConfig, TrainConfig, to_dict
from siamsearch.core.model import build_encoder


def test_round_trip_gives_identical_embeddings_and_config(tmp_path):
    enc = EncoderConfig(backbone="small", dim=8, image_size=24, channels=1)
    model = build_encoder(enc).eval()
    fp = save_model(tmp_path / "m.pt", model, TrainConfig(loss="triplet"), calibration={"threshold_best_f1": 0.7})
    loaded, ckpt = load_encoder(tmp_path / "m.pt")
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert ckpt.encoder == enc and ckpt.fingerprint == fp and ckpt.train.loss == "triplet"
    assert ckpt.preprocess.image_size == 24 and ckpt.preprocess.channels == 1
    assert ckpt.calibration["threshold_best_f1"] == 0.7


def test_fingerprint_follows_the_weights_not_the_metadata(tmp_path):
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24))
    fp = save_model(tmp_path / "m.pt", model)
    update_model_file(tmp_path / "m.pt", calibration={"threshold_best_f1": 0.5})
    assert load_checkpoint(tmp_path / "m.pt").fingerprint == fp == fingerprint(model.state_dict())
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert fingerprint(model.state_dict()) != fp


def test_wrapped_prefixes_are_stripped(tmp_path):
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24))
    save_model(tmp_path / "m.pt", model)
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    data["state_dict"] = {f"module._orig_mod.{k}": v for k, v in data["state_dict"].items()}
    torch.save(data, tmp_path / "wrapped.pt")
    loaded, _ = load_encoder(tmp_path / "wrapped.pt")
    saved, got = model.state_dict(), loaded.state_dict()
    assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k]) for k in saved)


def test_a_model_file_from_before_the_renames_loads_with_todays_names(tmp_path):
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24))
    fp = save_model(tmp_path / "m.pt", model, TrainConfig())
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    old = {k: v for k, v in data["train"].items() if k not in ("hinge", "augment")}
    data["train"] = old | {"margin": 0.3, "augment": "faces", "augment_cfg": to_dict(AUGMENT_PRESETS["photo-edits"]),
                           "workers": 4, "device": "cuda", "amp": True, "cache_gb": 1.0}  # runtime knobs of old
    torch.save(data, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.train.hinge == 0.3 and ckpt.train.augment == AUGMENT_PRESETS["photo-edits"] and ckpt.fingerprint == fp


@pytest.mark.parametrize("content,match", [(b"", "not a readable"), (b"garbage" * 10, "not a readable")])
def test_bad_files_give_one_line_errors(tmp_path, content, match):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no model file"):
        load_encoder(tmp_path / "missing.pt")


def test_truncated_and_foreign_and_future_files_are_refused(tmp_path):
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24))
    save_model(tmp_path / "m.pt", model)
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="written completely"):
        load_encoder(tmp_path / "t.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a siamsearch"):
        load_encoder(tmp_path / "other.pt")
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade"):
        load_encoder(tmp_path / "future.pt")



def _without(data, key):
    return {k: v for k, v in data.items() if k != key}


def _one_weight(data):
    return dict(list(data["state_dict"].items())[:1])


DAMAGE = {  # a saved model file rewritten with one entry missing, of the wrong type or not fitting the network
    **{f"no {key}": lambda d, key=key: _without(d, key) for key in ("encoder", "preprocess", "state_dict", "fingerprint")},
    "encoder a list": lambda d: d | {"encoder": [1, 2]},
    "dim a string": lambda d: d | {"encoder": d["encoder"] | {"dim": "128"}},
    "unknown backbone": lambda d: d | {"encoder": d["encoder"] | {"backbone": "vgg"}},
    "image_size a float": lambda d: d | {"preprocess": d["preprocess"] | {"image_size": 32.5}},
    "train a string": lambda d: d | {"train": "faces"},
    "epochs a bool": lambda d: d | {"train": {"epochs": True}},
    "history a dict": lambda d: d | {"history": {}},
    "calibration a list": lambda d: d | {"calibration": [0.5]},
    "weights not tensors": lambda d: d | {"state_dict": {k: [1.0] for k in _one_weight(d)}},
    "weights of another net": lambda d: d | {"state_dict": _one_weight(d)},
    "weights for another dim": lambda d: d | {"encoder": d["encoder"] | {"dim": 64}},
}


@pytest.mark.parametrize("case", DAMAGE)
def test_every_malformed_model_file_is_a_one_line_checkpoint_error(model_file, tmp_path, case):
    torch.save(DAMAGE[case](torch.load(model_file, weights_only=True)), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="is damaged") as caught:
        load_encoder(tmp_path / "bad.pt")
    assert "\n" not in str(caught.value)


def test_a_file_posing_as_another_model_by_its_declared_fingerprint_is_refused(tmp_path):
    from siamsearch.core.checkpoint import model_with, read_calibration, read_fingerprint

    enc = EncoderConfig(backbone="small", dim=8, image_size=24)
    wanted = save_model(tmp_path / "real.pt", build_encoder(enc), calibration={"threshold_best_f1": 0.2})
    (tmp_path / "real.pt").rename(tmp_path / "elsewhere.pt.bak")  # the index's own model is gone
    save_model(tmp_path / "stray.pt", build_encoder(enc), calibration={"threshold_best_f1": 1.9})
    data = torch.load(tmp_path / "stray.pt", weights_only=True)
    data["fingerprint"] = wanted  # other weights claiming the index's fingerprint
    torch.save(data, tmp_path / "stray.pt")
    assert model_with(wanted, [tmp_path]) is None
    for read in (load_checkpoint, read_fingerprint, read_calibration):
        with pytest.raises(CheckpointError, match="do not give the fingerprint"):
            read(tmp_path / "stray.pt")
