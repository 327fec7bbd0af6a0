"""Framing "trimmed": a plain border is cut off first, so framed and letterboxed copies look like their original."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from siamsearch.core.config import EncoderConfig
from siamsearch.core.errors import UsageError
from siamsearch.core.transforms import square_view, trim_plain_border


def _picture(w: int = 160, h: int = 90) -> Image.Image:
    """A textured picture whose corners differ from one another, like a photo."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 200], axis=2) + rng.integers(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _gap(a: Image.Image, b: Image.Image, framing: str) -> float:
    """Mean absolute difference of two pictures' square views, of 255."""
    return float((square_view(a, 32, framing).float() - square_view(b, 32, framing).float()).abs().mean())


@pytest.mark.parametrize("border", [
    lambda im: ImageOps.pad(im, (160, 160), color=(0, 0, 0)),  # letterboxed
    lambda im: ImageOps.expand(im, border=14, fill=(240, 230, 200)),  # a mount
])
def test_a_bordered_copy_frames_like_its_original_only_when_trimmed(border):
    picture = _picture()
    framed = border(picture)
    assert trim_plain_border(framed).size == pytest.approx(picture.size, abs=3)
    assert _gap(picture, framed, "trimmed") < 12 < _gap(picture, framed, "centre")


def test_a_picture_without_a_border_or_almost_all_plain_is_left_whole():
    picture = _picture()
    assert trim_plain_border(picture).size == picture.size
    dot = Image.new("RGB", (100, 100), (255, 255, 255))
    dot.paste((0, 0, 0), (50, 50, 53, 53))  # 0.1% of the area: a plain picture, not a picture in a border
    assert trim_plain_border(dot).size == dot.size
    assert square_view(picture, 24, "trimmed").shape == (3, 24, 24)


def test_framing_is_checked_and_travels_to_the_preprocessing():
    assert EncoderConfig(framing="trimmed").preprocess().framing == "trimmed"
    assert EncoderConfig().preprocess().framing == "centre"
    with pytest.raises(UsageError):
        EncoderConfig(framing="whole")
