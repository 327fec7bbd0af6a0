"""Finding images, identities, modes, and bad files reported rather than raised."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import add_bad_files, make_identities
from PIL import Image

from siamsearch.core.images import BadImageError, find_images, identity_of, load_image, scan_images


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
    assert reasons["truncated.png"] == "truncated file"
    with pytest.raises(BadImageError, match="file not found"):
        load_image(identity_dir / "missing.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr("siamsearch.core.images.MAX_PIXELS", 50 * 50)
    with pytest.raises(BadImageError, match="too large"):
        load_image(tmp_path / "big.png")


def test_a_fifo_named_like_an_image_is_a_failure_not_a_hang(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    scan = scan_images(tmp_path)
    assert scan.images == [tmp_path / "a.png"]
    assert [(f.path.name, f.reason) for f in scan.failures] == [("pipe.jpg", "not a regular file")]


def test_a_dangling_symlink_is_a_failure_and_leaves_the_scan_incomplete(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "usb").symlink_to(tmp_path / "unmounted")
    scan = scan_images(tmp_path)
    assert scan.images == [tmp_path / "a.png"]
    assert sorted((f.path.name, f.reason) for f in scan.failures) == [("gone.jpg", "broken symbolic link"),
                                                                      ("usb", "broken symbolic link")]
    assert sorted(p.name for p in scan.unread) == ["gone.jpg", "usb"]


def test_symlinked_folders_are_followed_once_and_a_loop_is_a_failure(tmp_path):
    photos, root = make_identities(tmp_path / "real", n_ids=2, per_id=2, size=4), tmp_path / "root"
    root.mkdir()
    for name in ("id00", "id01"):
        (root / name).symlink_to(photos / name, target_is_directory=True)
    (root / "more").symlink_to(photos / "id00", target_is_directory=True)  # reached twice: read once, by name
    (root / "id00" / "up").symlink_to(root, target_is_directory=True)  # back to the root: a loop
    scan = scan_images(root)
    assert [p.relative_to(root).as_posix() for p in scan.images] == ["id00/0.png", "id00/1.png",
                                                                      "id01/0.png", "id01/1.png"]
    assert [(f.path, f.reason) for f in scan.failures] == [
        (root / "id00" / "up", "symbolic link loop (it leads to a folder above it)")]
    assert not scan.unread


def test_an_unreadable_folder_is_a_failure(tmp_path, monkeypatch):
    make_identities(tmp_path, n_ids=2, per_id=1, size=4)
    real_scandir = os.scandir

    def refuse_id01(path):
        if Path(path).name == "id01":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_id01)  # root may read anything, so chmod cannot make this
    scan = scan_images(tmp_path)
    assert scan.images == [tmp_path / "id00" / "0.png"] and scan.unread == [tmp_path / "id01"]
    assert scan.failures[0].reason == "folder cannot be read (Permission denied)"


def test_images_up_to_the_documented_250_megapixels_decode(tmp_path):
    Image.new("L", (10_000, 10_000), 128).save(tmp_path / "big.png")  # 100 MP: Pillow's own guard says 89.5
    img = load_image(tmp_path / "big.png", 3, draft_size=32)
    assert img.mode == "RGB" and min(img.size) >= 96 and max(img.size) < 10_000  # reduced right after decoding
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's guard is back for everyone else


def test_the_original_size_survives_reduced_decoding_and_exif_turns(tmp_path):
    from siamsearch.core.images import ORIGINAL_SIZE

    Image.new("RGB", (3000, 2000), "white").save(tmp_path / "big.jpg")
    turned = Image.new("RGB", (300, 200), "white")
    exif = turned.getexif()
    exif[0x0112] = 6  # rotate 90
    turned.save(tmp_path / "turned.jpg", exif=exif)
    big = load_image(tmp_path / "big.jpg", draft_size=32)
    assert big.width < 3000 and big.info[ORIGINAL_SIZE] == (3000, 2000)
    assert load_image(tmp_path / "turned.jpg").info[ORIGINAL_SIZE] == (200, 300)


def test_a_file_with_two_names_is_listed_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    os.link(tmp_path / "a" / "x.png", tmp_path / "b" / "x.png")  # one file, two names: as a bind mount shows it
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "y.png")
    assert scan_images(tmp_path).images == [tmp_path / "a" / "x.png", tmp_path / "b" / "y.png"]
