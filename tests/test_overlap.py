"""Overlap: two shots a step aside are kept apart for review; a crop, a page holding the photo and a copy turned a
quarter are copies; two grains of one texture cannot show a copy's layout (review); a file that cannot be read keeps what its
vector says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from siamsearch.duplicates.dedup import find_duplicates
from siamsearch.duplicates.linkage import group
from siamsearch.duplicates.overlap import cells, check_pairs, overlap
from test_dedup import make_store, run


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """scikit-image's coffee cup, 600x400: a photo with a layout."""
    data = pytest.importorskip("skimage.data", reason='needs pip install -e ".[test]"')
    return Image.fromarray(data.coffee())


def _shots(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Two crops of 60% of the width: the left and the right one share a third of each."""
    w, h = img.size
    c = round(0.6 * w)
    return img.crop((0, 0, c, h)), img.crop((w - c, 0, w, h))


def _page(img: Image.Image) -> Image.Image:
    """The photo at 45% of a white page's width, among bars and lines of text, as a screenshot shows it."""
    page = Image.new("RGB", (1280, 860), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 1280, 70), fill=(222, 225, 230))
    for j in range(8):
        draw.rectangle((900, 170 + 34 * j, 1240, 184 + 34 * j), fill=(200, 200, 205))
    shot = img.copy()
    shot.thumbnail((576, 576))
    page.paste(shot, (260, 110))
    return page


def test_shots_a_step_aside_overlap_in_part_and_copies_lie_inside_their_original(photo):
    left, right = _shots(photo)
    aside = overlap(cells(left), cells(right))
    assert aside.partial and aside.contained < 0.5
    w, h = left.size
    crop = left.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((300, 220))
    for copy in (crop, _page(left), left.convert("L").convert("RGB")):
        found = overlap(cells(left), cells(copy))
        assert found.whole and not found.partial, found


def test_check_pairs_tries_the_turns_holds_look_alike_textures_and_leaves_unreadable_files_alone(photo, tmp_path):
    left, right = _shots(photo)
    files = {0: tmp_path / "left.jpg", 1: tmp_path / "right.jpg", 2: tmp_path / "turned.png", 3: tmp_path / "bad.jpg"}
    left.save(files[0])
    right.save(files[1])
    left.transpose(Image.Transpose.ROTATE_90).save(files[2])
    files[3].write_bytes(b"not an image")
    rng = np.random.default_rng(0)  # two grains of one texture: alike to a vector, no feature of one in the other
    files[4], files[5] = tmp_path / "grain.png", tmp_path / "grain-2.png"
    for n in (4, 5):
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(files[n])
    pairs = (np.array([0, 0, 0, 4]), np.array([1, 2, 3, 5]), np.array([0.2, 0.2, 0.2, 0.1]))
    checked = check_pairs(pairs, files.__getitem__)
    assert checked.partial == {(0, 1)} and checked.unverified == {(4, 5)}  # the unreadable file: no evidence


def test_pairs_kept_apart_are_never_grouped_whatever_the_linkage():
    ids = np.array([0, 1, 2])
    vectors = np.array([[1.0, 0.0], [0.99, 0.141], [0.98, 0.199]], np.float32)
    pairs = (np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.14, 0.2, 0.06]))
    rank = np.array([0, 1, 2])
    for linkage in ("kept", "complete", "single"):
        together = group(pairs, ids, vectors, 0.5, linkage, rank)
        assert [g.tolist() for g in together] == [[0, 1, 2]]
        apart = group(pairs, ids, vectors, 0.5, linkage, rank, apart={(0, 1)})
        assert all(not {0, 1} <= set(g.tolist()) for g in apart) and apart


def test_dedup_puts_shots_a_step_aside_in_review_and_keeps_their_copies_grouped(photo, tmp_path):
    left, right = _shots(photo)
    pictures = [left, right, left.convert("L").convert("RGB"), right.resize((200, 220))]
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    x = base + rng.normal(size=(4, 16)) * 0.02  # the vectors put all four within the margin, as textures do
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = make_store(tmp_path, x)
    for i, picture in enumerate(pictures):
        picture.save(Path(store.root) / f"d{i % 3}" / f"v{i:04d}.png")
    checked = find_duplicates(store, 0.5, keep="first")
    groups = {frozenset([g.keep.path, *(m.path for m in g.members if m.status == "duplicate")])
              for g in checked.groups}
    assert groups == {frozenset(["d0/v0000.png", "d2/v0002.png"]), frozenset(["d1/v0001.png", "d0/v0003.png"])}
    assert checked.partial >= 1 and all(link.status == "review" for link in checked.links)
    plain = find_duplicates(store, 0.5, keep="first", check_overlap=False)
    assert plain.partial == 0 and len(plain.groups) == 1 and len(plain.groups[0].members) == 3
    for flag, partial in (("--overlap", checked.partial), ("--no-overlap", 0)):  # the CLI says the same
        report = json.loads(run("dedup", "--index", store.path, "--margin", 0.5, flag, "--json").stdout)
        assert report["partial"] == partial
