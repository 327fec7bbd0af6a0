"""Near-duplicate check on real photos: siamsearch at its calibrated default margin vs imagehash's phash.

The sample photos that ship inside scikit-image (siamsearch.samples.PHOTOS plus gravel and colorwheel) are
split by --seed into a training half and a test half; scikit-learn's china and flower join the test half.
The test folder holds each test original and one copy of it per demo.COPIES kind (resized, cropped, JPEG,
brighter, grayscale, rotated): groups of 7. A small encoder (luminance only by default, as phash; each image
standardised, as demo.PHOTOS_ENCODER) trains self-supervised (NT-Xent, the "near-duplicates" augmentation) on
tiles of the training photos and on procedural dead-leaves images (siamsearch.samples); no test photo and no
copy is seen. calibrate() on labelled copies of the 3x3 training tiles (samples.build_copies) writes its
thresholds into the model file; the test folder is indexed and grouped by find_duplicates at default_margin,
the margin `siamsearch dedup` uses without --margin (the best-F1 distance on balanced calibration pairs,
capped at the distance holding 97.5% of the same pairs), with complete linkage (dedup's default) and with
single linkage; and, for comparison, with complete linkage at the uncapped best-F1 distance (the default
until the cap) and at the 99.9%-precision distance. phash (64 bits) pairs images within PHASH_BITS bits,
imagededup's default for phash.

Scores are pairwise: true pairs are all pairs of one group of 7; predicted pairs are the pairs of files
sharing a dedup group (kept file and members of the statuses counted), or within the phash threshold.
The columns by kind are the fraction of originals paired with their copy of that kind.

    .venv/bin/python scripts/bench_neardup.py    # 10 min of training at 48 px on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from siamsearch.commands import default_margin
from siamsearch.config import Runtime
from siamsearch.dedup import DedupResult, find_duplicates
from siamsearch.demo import PHOTOS_ENCODER, PHOTOS_TRAINING
from siamsearch.evaluate import calibrate
from siamsearch.indexing import index_folder
from siamsearch.samples import (COPIES, PHOTOS, build_copies, photo_from_array, sample_photo, save_tiles, tile_files,
                                write_dead_leaves)
from siamsearch.train import train

EXTRA_PHOTOS = ("gravel", "colorwheel")  # sample photos the demo leaves out, real material for a benchmark
GRIDS = (1, 2, 3, 4)  # training tiles: each photo whole, and cut into 2x2, 3x3 and 4x4
CALIBRATION_GRID = 3  # copies of these tiles calibrate: they do not overlap, unlike tiles of two grids
LEAVES = 1000  # procedural images (siamsearch.samples) beside about 300 photo tiles: less to memorise
IMAGE_SIZE = 48  # at the demo's 32 px, cropped and rotated copies of page (text) were missed more often
PHASH_BITS = 10  # imagededup's default max_distance_threshold for its phash
Pair = tuple[str, str]  # two file names, sorted


def split_photos(seed: int) -> tuple[list[str], dict[str, Image.Image]]:
    """(training photo names, test photos by name): disjoint halves of scikit-image's, plus scikit-learn's."""
    from sklearn.datasets import load_sample_images

    names = np.random.default_rng(seed).permutation(list(PHOTOS + EXTRA_PHOTOS)).tolist()
    half = len(names) // 2
    test = {n: sample_photo(n) for n in sorted(names[half:])}
    found = load_sample_images()
    test |= {Path(f).stem: photo_from_array(a) for f, a in zip(found.filenames, found.images)}
    return sorted(names[:half]), test


def build_test(photos: dict[str, Image.Image], folder: Path) -> list[str]:
    """Each photo as <name>.png and one copy per COPIES kind as <name>_<kind>.jpg; returns the file names."""
    folder.mkdir(parents=True)
    for name, img in photos.items():
        img.save(folder / f"{name}.png")
        for kind, make in COPIES.items():
            make(img).convert("RGB").save(folder / f"{name}_{kind}.jpg", quality=90)
    return sorted(f.name for f in folder.iterdir())


def build_training(names: list[str], folder: Path, leaves: int, seed: int) -> Path:
    """Tiles of the training photos in folder/grid<n>/ (n in GRIDS) and dead-leaves images in folder/leaves/.

    Self-supervised: each file is its own identity.
    """
    for grid in GRIDS:
        (folder / f"grid{grid}").mkdir(parents=True)
    for name in names:
        img = sample_photo(name)
        for grid in GRIDS:
            save_tiles(img, name, folder / f"grid{grid}", grid)
    if leaves:
        write_dead_leaves(folder / "leaves", leaves, seed=seed)
    return folder


def pair(a: str, b: str) -> Pair:
    """Two file names in sorted order, so a pair is the same whichever way it was found."""
    return (a, b) if a <= b else (b, a)


def pairs_of(groups: list[list[str]]) -> set[Pair]:
    """Every pair within each group of file names."""
    return {pair(a, b) for g in groups for a, b in itertools.combinations(g, 2)}


def phash_pairs(folder: Path, names: list[str], bits: int) -> set[Pair]:
    """Pairs of files whose 64-bit phashes differ in at most `bits` bits."""
    hashes = {n: imagehash.phash(Image.open(folder / n)) for n in names}
    return {pair(a, b) for a, b in itertools.combinations(names, 2) if hashes[a] - hashes[b] <= bits}


def dedup_pairs(result: DedupResult, statuses: tuple[str, ...]) -> set[Pair]:
    """Pairs within each dedup group among the kept file and its members of the given statuses."""
    return pairs_of([[g.keep.path] + [m.path for m in g.members if m.status in statuses] for g in result.groups])


def score_row(method: str, setting: str, pred: set[Pair], photos: list[str]) -> list[str]:
    """One table row: method, setting, pairs predicted, precision, recall, F1, then recall by copy kind."""
    true = pairs_of([[f"{p}.png"] + [f"{p}_{kind}.jpg" for kind in COPIES] for p in photos])
    hits = len(pred & true)
    precision, recall = hits / max(len(pred), 1), hits / len(true)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    kinds = [np.mean([pair(f"{p}.png", f"{p}_{kind}.jpg") in pred for p in photos]) for kind in COPIES]
    return [method, setting, str(len(pred)), f"{precision:.3f}", f"{recall:.3f}", f"{f1:.3f}"] + [f"{k:.2f}"
                                                                                                 for k in kinds]


def print_table(rows: list[list[str]]) -> None:
    """Left-aligned columns under a header."""
    rows = [["method", "setting", "pairs", "precision", "recall", "F1"] + list(COPIES)] + rows
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)))


def train_and_calibrate(tiles: Path, calibration: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Self-supervised training within --minutes, then calibrate() writes the thresholds into the model file."""
    enc = dataclasses.replace(PHOTOS_ENCODER, image_size=args.image_size, channels=args.channels,
                              standardize=args.standardize)
    cfg = dataclasses.replace(PHOTOS_TRAINING, epochs=10_000, max_minutes=args.minutes, seed=args.seed)  # minutes bind
    print(f"encoder: {enc}\ntraining: {cfg}")
    t0 = time.perf_counter()
    trained = train(tiles, model, enc, cfg, Runtime(device="cpu", amp=False))
    best = trained.best or {}
    print(f"trained {len(trained.history)} epochs in {(time.perf_counter() - t0) / 60:.1f} min ({trained.stopped}); "
          f"best epoch {best.get('epoch')}: roc_auc {best.get('roc_auc', float('nan')):.4f}, "
          f"one-shot {best.get('one_shot', float('nan')):.3f} on held-out tiles")
    cal = calibrate(build_copies(tile_files(tiles / f"grid{CALIBRATION_GRID}"), calibration, seed=args.seed), model,
                    target_precision=0.999, workers=0, device="cpu")
    print(f"calibrated on copies of {CALIBRATION_GRID}x{CALIBRATION_GRID} training tiles ({cal['pairs']} pairs): "
          f"best-F1 distance {cal['threshold_best_f1']:.4f} (F1 {cal['best_f1']:.3f}), {cal['target_recall']:.1%} "
          f"of same pairs within {cal['threshold_at_recall']:.4f}, 99.9%-precision distance "
          f"{cal['threshold_at_precision']:.4f} (recall {cal['recall_at_threshold']:.3f})")
    return cal


def siamsearch_rows(test: Path, index: Path, model: Path, cal: dict[str, Any], photos: list[str]) -> list[list[str]]:
    """Index the test folder; score dedup at its default margin with either linkage, and at two other margins."""
    store, _ = index_folder(test, index, model, rebuild=True, runtime=Runtime(workers=0, device="cpu"))
    best_f1, strict = cal["threshold_best_f1"], cal["threshold_at_precision"]
    with store:
        margin = default_margin(store).margin
        found = {"default": find_duplicates(store, margin), "single": find_duplicates(store, margin, linkage="single"),
                 "best_f1": find_duplicates(store, best_f1), "strict": find_duplicates(store, strict)}
    settings = {"default": f"margin {margin:.3f} (default), complete linkage (default)",
                "single": f"margin {margin:.3f} (default), single linkage",
                "best_f1": f"margin {best_f1:.3f} (best-F1 distance, uncapped), complete linkage",
                "strict": f"margin {strict:.3f} (99.9%-precision distance), complete linkage"}
    return [score_row("siamsearch", settings[k], dedup_pairs(result, ("duplicate",)), photos)
            for k, result in found.items()]


def main() -> None:
    """Build the data, train, calibrate, index, dedup, hash, and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_neardup"), help="emptied and rebuilt")
    ap.add_argument("--seed", type=int, default=0, help="photo split and training seed")
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="encoder input side")
    ap.add_argument("--leaves", type=int, default=LEAVES, help="dead-leaves images added to training")
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1: luminance only, as phash")
    ap.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=PHOTOS_ENCODER.standardize,
                    help="standardise each image before the encoder (EncoderConfig.standardize)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"(load average {os.getloadavg()[0]:.1f})")
    shutil.rmtree(args.workdir, ignore_errors=True)
    data, model = args.workdir / "data", args.workdir / "photos.pt"
    train_names, test_photos = split_photos(args.seed)
    files = build_test(test_photos, data / "test")
    tiles = build_training(train_names, data / "train", args.leaves, args.seed)
    print(f"train photos ({len(train_names)}, {sum(1 for _ in tiles.glob('grid*/*.png'))} tiles) "
          f"and {args.leaves} dead-leaves images: {', '.join(train_names)}")
    print(f"test photos ({len(test_photos)}, {len(files)} files): {', '.join(test_photos)}")
    cal = train_and_calibrate(tiles, data / "calibration", model, args)
    photos = list(test_photos)
    rows = siamsearch_rows(data / "test", args.workdir / "index", model, cal, photos)
    rows.append(score_row("imagehash", f"phash: hamming <= {PHASH_BITS}/64",
                          phash_pairs(data / "test", files, PHASH_BITS), photos))
    print(f"\npairwise scores on {len(files)} test files; by kind: recall of (original, copy) pairs")
    print_table(rows)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
