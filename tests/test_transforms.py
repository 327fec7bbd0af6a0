"""The copy edits of training augmentation: shapes kept, pixels changed, the same batch for the same seed."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from siamsearch.core.config import AUGMENT_PRESETS, AugmentConfig
from siamsearch.core.transforms import augment_batch, draw_page, draw_shapes, draw_text, jpeg

BATCH = (torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def run(cfg: AugmentConfig, seed: int = 0, batch: torch.Tensor = BATCH) -> torch.Tensor:
    return augment_batch(batch, 32, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_copies_preset_keeps_shape_range_and_is_deterministic_per_seed(channels):
    batch = BATCH[:, :channels]
    a, b = run(AUGMENT_PRESETS["copy-edits"], 0, batch), run(AUGMENT_PRESETS["copy-edits"], 0, batch)
    assert a.shape == (6, channels, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, run(AUGMENT_PRESETS["copy-edits"], 1, batch))


@pytest.mark.parametrize("edit", ["text_p", "shapes_p", "jpeg_p", "pad_p", "page_p"])
def test_each_copy_edit_changes_pixels(edit):
    plain = AUGMENT_PRESETS["none"]
    edited = run(dataclasses.replace(plain, **{edit: 1.0}))
    assert edited.shape == (6, 3, 32, 32)
    assert not torch.allclose(edited, run(plain), atol=1 / 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_pil_edits_keep_size_and_mode(mode):
    img = Image.new(mode, (50, 40), 128)
    rng = np.random.default_rng(0)
    for out in (draw_text(img, rng), draw_shapes(img, rng), jpeg(img, 30)):
        assert out.size == img.size and out.mode == mode
    assert np.asarray(draw_text(img, np.random.default_rng(1))).std() > 0  # the caption left ink


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_page_holds_the_picture_smaller_among_light_bars_and_lines(mode):
    img = Image.new(mode, (200, 160), 0)  # black: the only black in a page drawn in greys of 60 and up
    out = draw_page(img, np.random.default_rng(3))
    assert out.size == img.size and out.mode == mode
    black = (np.asarray(out.convert("L")) < 20).mean()
    assert 0.35**2 * 0.9 <= black <= 0.65**2 + 0.05  # the picture shrunk to 35-65% of each side (a caption may add)
    assert np.asarray(out.convert("L")).max() >= 225  # the page around it


def test_lighting_raises_to_a_power_within_gamma_and_shades_one_side():
    grey = torch.full((64, 1, 40, 40), 128, dtype=torch.uint8)
    none = AUGMENT_PRESETS["none"]
    powered = run(dataclasses.replace(none, gamma=3.0), batch=grey)
    means = powered.mean(dim=(1, 2, 3))
    assert torch.allclose(powered.amin(dim=(1, 2, 3)), powered.amax(dim=(1, 2, 3)))  # gamma alone is uniform
    assert means.min() >= (128 / 255) ** 3 - 1e-4 and means.max() <= (128 / 255) ** (1 / 3) + 1e-4
    assert means.min() < 0.35 and means.max() > 0.65  # both ways, far
    shaded = run(dataclasses.replace(none, shade=0.8), batch=grey)
    assert shaded.max() <= 128 / 255 + 1e-4 and shaded.min() >= 0.2 * 128 / 255 - 1e-4  # only darker, by <= 80%
    assert (shaded.amax(dim=(1, 2, 3)) - shaded.amin(dim=(1, 2, 3))).max() > 0.2  # a ramp across the image
