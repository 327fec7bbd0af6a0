"""Configs rebuild from what older files stored, and from a command's options by field name."""

import dataclasses

import pytest

from siamsearch.core.config import (
    AUGMENT_PRESETS,
    EncoderConfig,
    Runtime,
    TrainConfig,
    from_dict,
    to_dict,
    with_overrides,
)
from siamsearch.training.recipes import RECIPES


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


def test_with_overrides_replaces_the_fields_given_and_keeps_the_rest():
    options = {"backbone": "small", "dim": 16, "epochs": 3, "hinge": None, "workers": 2, "device": "cpu",
               "out": "ignored.pt", "resume": True}
    assert with_overrides(EncoderConfig(), options) == EncoderConfig(backbone="small", dim=16)
    cfg = RECIPES["copies"].train
    assert with_overrides(cfg, options) == dataclasses.replace(cfg, epochs=3)
    assert with_overrides(Runtime(), options) == Runtime(workers=2, device="cpu")


def test_with_overrides_still_validates():
    with pytest.raises(ValueError, match="unknown loss"):
        with_overrides(TrainConfig(), {"loss": "hinge"})


def test_old_encoder_configs_keep_average_pooling_and_the_mlp_head():
    old = {"backbone": "resnet18", "dim": 64, "image_size": 112, "channels": 3, "pretrained": True}
    assert from_dict(EncoderConfig, old).pooling == "avg" and from_dict(EncoderConfig, old).head == "mlp"


def test_test_scales_parse_from_a_comma_list_and_a_bad_one_is_one_line():
    from siamsearch.core.config import parse_scales

    assert parse_scales("1.41, 2") == (1.41, 2.0) and parse_scales("") == ()
    with pytest.raises(ValueError, match="--test-scales expects factors separated by commas"):
        parse_scales("1.41;2")
