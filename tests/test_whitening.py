"""The learned whitening: its algebra on synthetic identities, fitted by `train` with and without SGD."""

import dataclasses

import numpy as np
import pytest
import torch

from siamsearch.core.checkpoint import load_checkpoint, load_encoder
from siamsearch.core.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig
from siamsearch.core.errors import UsageError
from siamsearch.index.indexing import index_folder
from siamsearch.core.metrics import precision_at_1
from siamsearch.core.model import build_encoder
from siamsearch.training.whitening import learned_whitening

ENC = EncoderConfig(backbone="small", dim=32, image_size=32, channels=3, head="linear")
CFG = TrainConfig(epochs=0, ids_per_batch=8, images_per_id=3, val_fraction=0.25, ways=4, episodes=100,
                  augment=AUGMENT_PRESETS["portraits"])


def nuisance_identities(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 identities x 8 items in 16-d: identity along axes 0-3 (spread 1), a nuisance four times as strong along
    axes 4-7 that varies within each identity (lighting, say), small noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(60), 8)
    x = rng.normal(0, 0.05, (len(labels), 16))
    x[:, :4] += rng.normal(0, 1, (60, 4))[labels]
    x[:, 4:8] += rng.normal(0, 4, (len(labels), 4))
    return x, labels


def test_whitening_makes_the_within_identity_scatter_white_and_finds_identities_past_the_nuisance():
    x, labels = nuisance_identities()
    mean, projection = learned_whitening(x, labels, 8, shrink=0.0)
    z = (x - mean) @ projection
    centres = np.stack([z[labels == k].mean(0) for k in range(60)])
    within = z - centres[labels]
    assert np.allclose(within.T @ within / len(z), np.eye(8), atol=1e-6)  # unit variance within identities
    test, test_labels = nuisance_identities(seed=1)  # other identities, the same nuisance
    assert precision_at_1(test, test_labels) < 0.5
    assert precision_at_1((test - mean) @ projection, test_labels) > 0.95


def test_shrinkage_keeps_the_fit_defined_with_fewer_items_than_dimensions():
    x, labels = nuisance_identities()
    wide = np.concatenate([x, np.zeros((len(x), 600))], axis=1)  # 616 dimensions, 480 items, rank-deficient
    mean, projection = learned_whitening(wide, labels, 8)
    assert projection.shape == (616, 8) and np.isfinite(projection).all()


def test_epochs_0_fits_the_whitening_alone_and_the_model_gives_whitened_vectors(identity_dir, tmp_path):
    from siamsearch.training.loop import train

    enc = dataclasses.replace(ENC, whiten=8)
    out = tmp_path / "m.pt"
    result = train(identity_dir, out, enc, CFG)
    assert [r["epoch"] for r in result.history] == [0] and result.history[0]["whitened"] > 0
    assert 0 < result.calibration["threshold_best_f1"] < 2
    model, ckpt = load_encoder(out)
    assert ckpt.encoder.whiten == 8 and ckpt.fingerprint == result.fingerprint
    with torch.no_grad():
        vectors = model(torch.rand(3, 3, 32, 32))
    assert vectors.shape == (3, 8) and torch.allclose(vectors.norm(dim=1), torch.ones(3))
    assert not torch.equal(model.whitening.projection, torch.eye(32, 8))  # fitted, not the placeholder
    store, _ = index_folder(identity_dir, tmp_path / "index", out, runtime=Runtime(workers=0, device="cpu"))
    with store:
        assert store.dim == 8 and len(store) > 0


def test_a_whitening_that_reads_the_pooled_features_skips_the_head(identity_dir, tmp_path):
    from siamsearch.training.loop import train

    out = tmp_path / "m.pt"
    train(identity_dir, out, dataclasses.replace(ENC, whiten=48, whiten_from="pool"), CFG)  # 48 > dim 32: the trunk's 256
    model, ckpt = load_encoder(out)
    assert ckpt.encoder.whiten_from == "pool" and model.whitening.projection.shape == (256, 48)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        vectors, features = model(x), model.features(x)
        model.head.reset_parameters()  # a new head: the features SGD trains change, the vectors do not
        assert not torch.allclose(model.features(x), features) and torch.allclose(model(x), vectors, atol=1e-6)
    assert vectors.shape == (4, 48) and torch.allclose(vectors.norm(dim=1), torch.ones(4))


def test_sgd_first_then_the_whitening_on_the_best_epoch(identity_dir, tmp_path):
    from siamsearch.training.loop import train

    result = train(identity_dir, tmp_path / "m.pt", dataclasses.replace(ENC, whiten=16),
                   dataclasses.replace(CFG, epochs=2, augment=AUGMENT_PRESETS["none"]))
    assert [r["epoch"] for r in result.history][:2] == [1, 2] and "whitened" in result.history[-1]
    assert load_checkpoint(tmp_path / "m.pt").history[-1] == result.best


def test_nothing_to_fit_or_a_wrong_size_is_one_clear_error(identity_dir, tmp_path):
    from siamsearch.training.loop import train

    with pytest.raises(UsageError, match="--epochs 0 trains nothing"):
        train(identity_dir, tmp_path / "m.pt", ENC, CFG)
    with pytest.raises(UsageError, match="whiten must be 0"):
        dataclasses.replace(ENC, whiten=64)
    with pytest.raises(UsageError, match="set dim to 256"):
        build_encoder(dataclasses.replace(ENC, head="none", dim=64))
    too_wide = dataclasses.replace(ENC, whiten=300, whiten_from="pool")  # the small net pools 256 features
    with pytest.raises(UsageError, match="exceeds the 256 dimensions it reads"):
        build_encoder(too_wide)
    with pytest.raises(UsageError, match="exceeds the 256 dimensions it reads"):  # before any SGD
        train(identity_dir, tmp_path / "m.pt", too_wide, dataclasses.replace(CFG, epochs=1))
    frozen = dataclasses.replace(ENC, head="none", dim=256)
    with pytest.raises(UsageError, match="nothing to train"):
        train(identity_dir, tmp_path / "m.pt", frozen, dataclasses.replace(CFG, epochs=1, freeze_backbone=True))


def test_a_folder_too_small_for_the_recipes_size_gets_a_whitening_of_the_axes_its_views_span(identity_dir, tmp_path):
    from siamsearch.training.loop import train

    out = tmp_path / "m.pt"
    train(identity_dir, out, dataclasses.replace(ENC, whiten=250, whiten_from="pool"), CFG)  # ~70 images × 3 views
    model, ckpt = load_encoder(out)
    kept = ckpt.encoder.whiten
    assert kept < 250 and model.whitening.projection.shape == (256, kept)
    with torch.no_grad():
        vectors = model(torch.rand(3, 3, 32, 32))
    assert vectors.shape == (3, kept) and torch.allclose(vectors.norm(dim=1), torch.ones(3))
