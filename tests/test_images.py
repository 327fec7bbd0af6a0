"""Finding images, identities, modes, and bad files reported rather than raised."""

import numpy as np
import pytest
from PIL import Image

from conftest import add_bad_files
from siamsearch.images import BadImageError, find_images, identity_of, load_image


def test_find_images_sorted_recursive_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for p in ["b/x/2.PNG", "a.jpg", "b/1.pgm", ".hidden/3.png", "b/.4.png"]:
        Image.new("L", (4, 4)).save(tmp_path / p, format="PNG")
    (tmp_path / "readme.txt").write_text("hi")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b/1.pgm", "b/x/2.PNG"]
    assert identity_of(tmp_path / "b/x/2.PNG", tmp_path) == "b/x"
    assert identity_of(tmp_path / "a.jpg", tmp_path) is None


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_images(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_any_mode_becomes_rgb_or_l(tmp_path, mode):
    img = Image.new("RGB", (10, 6), (200, 30, 90)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    assert load_image(path, 3).mode == "RGB" and load_image(path, 3).size == (10, 6)
    assert load_image(path, 1).mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 20)


def test_bad_files_raise_bad_image_error_with_reason(identity_dir):
    reasons = {}
    for path in add_bad_files(identity_dir):
        with pytest.raises(BadImageError) as info:
            load_image(path)
        reasons[path.name] = info.value.reason
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["notes.png"] == "not an image"
    assert "decode" in reasons["truncated.png"] or "not an image" in reasons["truncated.png"]
    with pytest.raises(BadImageError, match="file not found"):
        load_image(identity_dir / "missing.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr("siamsearch.images.MAX_PIXELS", 50 * 50)
    with pytest.raises(BadImageError, match="too large"):
        load_image(tmp_path / "big.png")
