"""Procedural dead-leaves training images: reproducible, varied, and sized by the r^-3 law."""

import numpy as np
from PIL import Image

from siamsearch.core.samples import dead_leaves, leaf_radii, write_dead_leaves


def test_radii_stay_in_range_and_small_leaves_dominate_as_r_to_the_minus_3():
    r = leaf_radii(np.random.default_rng(0), 100_000, 3.0, 64.0)
    assert r.min() >= 3.0 and r.max() <= 64.0
    # under the density r^-3, P(r > 2 r_min) is about a quarter: ((2 r_min)^-2 - r_max^-2) / (r_min^-2 - r_max^-2)
    expected = ((2 * 3.0) ** -2 - 64.0 ** -2) / (3.0 ** -2 - 64.0 ** -2)
    assert abs((r > 6.0).mean() - expected) < 0.01


def test_dead_leaves_images_are_rgb_detailed_and_differ():
    rng = np.random.default_rng(0)
    a, b = (np.asarray(dead_leaves(rng, side=64), np.float32) for _ in range(2))
    assert a.shape == b.shape == (64, 64, 3)
    assert a.std() > 20 and b.std() > 20  # not blank
    assert np.abs(a - b).mean() > 20  # two draws are two different pictures
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 8  # many leaves, not one flat shape


def test_write_dead_leaves_is_reproducible_by_seed(tmp_path):
    first = write_dead_leaves(tmp_path / "a", 3, side=32, seed=5)
    again = write_dead_leaves(tmp_path / "b", 3, side=32, seed=5)
    other = write_dead_leaves(tmp_path / "c", 3, side=32, seed=6)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["leaves_00000.png", "leaves_00001.png", "leaves_00002.png"]

    def pixels(folder, name):
        return np.asarray(Image.open(folder / name))

    assert all(np.array_equal(pixels(first, n), pixels(again, n)) for n in names)
    assert not np.array_equal(pixels(first, names[0]), pixels(other, names[0]))
