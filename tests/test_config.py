"""Configs rebuild from what older files stored, and from a command's options by field name."""

import pytest

from siamsearch.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig, from_dict, from_options, to_dict


def test_legacy_keys_map_onto_todays_fields():
    old = {"loss": "triplet", "margin": 0.25, "augment": "characters",
           "augment_cfg": to_dict(AUGMENT_PRESETS["characters"]), "workers": 2, "device": "cuda", "amp": True}
    cfg = from_dict(TrainConfig, old)
    assert cfg == TrainConfig(loss="triplet", hinge=0.25, augment=AUGMENT_PRESETS["characters"])


def test_an_old_augment_label_without_its_config_keeps_the_default():
    assert from_dict(TrainConfig, {"augment": "faces"}).augment == TrainConfig().augment


def test_todays_files_round_trip():
    cfg = TrainConfig(loss="contrastive", hinge=0.8, augment=AUGMENT_PRESETS["none"], unfreeze=((3, ("layer4",)),))
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_from_options_picks_each_config_its_fields_by_name():
    options = {"backbone": "small", "dim": 16, "epochs": 3, "hinge": 0.5, "workers": 2, "device": "cpu",
               "out": "ignored.pt", "resume": True}
    assert from_options(EncoderConfig, options) == EncoderConfig(backbone="small", dim=16)
    assert from_options(TrainConfig, options) == TrainConfig(epochs=3, hinge=0.5)
    assert from_options(Runtime, options) == Runtime(workers=2, device="cpu")


def test_from_options_still_validates():
    with pytest.raises(ValueError, match="unknown loss"):
        from_options(TrainConfig, {"loss": "hinge"})
