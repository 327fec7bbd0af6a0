"""Near-duplicate check on real photos: siamsearch at its calibrated default margin vs imagehash's phash.

The sample photos that ship inside scikit-image (siamsearch.demo.PHOTOS plus gravel and colorwheel) are
split by --seed into a training half and a test half; scikit-learn's china and flower join the test half.
The test folder holds each test original and one copy of it per demo.COPIES kind (resized, cropped, JPEG,
brighter, grayscale, rotated): groups of 7. The encoder trains self-supervised on tiles of the training
photos only, is calibrated on labelled copies of those tiles (demo.build_copies; calibrate() stores the
thresholds in the model file), indexes the test folder, and dedup groups it at default_margin, the margin
`siamsearch dedup` uses without --margin (single linkage, no review band). A second siamsearch setting
is the demo's: duplicate at the 99.9%-precision threshold, review up to the default margin, complete
linkage, scored on its duplicates and then on duplicates + review. phash (64 bits) calls a pair a
duplicate at Hamming distance <= PHASH_BITS, the default of imagededup's PHash.find_duplicates.

Scores are pairwise: true pairs are all pairs of one group; predicted pairs are all pairs of files that
share a dedup group (and the status counted), or within the phash threshold. "recall by copy" is the
fraction of originals whose copy of that kind is paired with the original.

    .venv/bin/python scripts/bench_neardup.py --minutes 6
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

import imagehash
import numpy as np
from PIL import Image

from siamsearch.dedup import default_margin, find_duplicates
from siamsearch.demo import (COPIES, PHOTOS, PHOTOS_ENCODER, PHOTOS_TRAINING, build_copies, photo_from_array,
                             sample_photo, save_tiles)
from siamsearch.evaluate import calibrate
from siamsearch.search import EmbedOptions, index_folder
from siamsearch.train import train

EXTRA_PHOTOS = ("gravel", "colorwheel")  # sample photos the demo leaves out, real material for a benchmark
GRIDS = (1, 2, 3, 4)  # training tiles: each photo whole, and cut into 2x2, 3x3 and 4x4
PHASH_BITS = 10
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


def build_test(photos: dict[str, Image.Image], folder: Path) -> dict[str, tuple[str, str]]:
    """Each photo and one copy per COPIES kind; returns file name -> (photo, kind or "original")."""
    folder.mkdir(parents=True)
    truth = {}
    for name, img in photos.items():
        img.save(folder / f"{name}.png")
        truth[f"{name}.png"] = (name, "original")
        for kind, make in COPIES.items():
            make(img).convert("RGB").save(folder / f"{name}_{kind}.jpg", quality=90)
            truth[f"{name}_{kind}.jpg"] = (name, kind)
    return truth


def build_training(names: list[str], folder: Path) -> Path:
    """Unlabelled tiles (GRIDS) of the training photos: one identity each, for self-supervised training."""
    folder.mkdir(parents=True)
    for name in names:
        for grid in GRIDS:
            save_tiles(sample_photo(name), f"{name}{grid}", folder, grid)
    return folder


def pairs_of(groups: list[list[str]]) -> set[Pair]:
    """Every pair within each group of file names."""
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}  # type: ignore[misc]


def phash_pairs(folder: Path, names: list[str], bits: int) -> set[Pair]:
    """Pairs of files whose 64-bit phashes differ in at most `bits` bits."""
    hashes = {n: imagehash.phash(Image.open(folder / n)) for n in names}
    return {tuple(sorted((a, b))) for a, b in itertools.combinations(names, 2)  # type: ignore[misc]
            if hashes[a] - hashes[b] <= bits}


def dedup_pairs(result, statuses: tuple[str, ...]) -> set[Pair]:
    """Pairs within each dedup group among the kept file and its members of the given statuses."""
    return pairs_of([[g.keep.path] + [m.path for m in g.members if m.status in statuses] for g in result.groups])


def score_row(method: str, setting: str, pred: set[Pair], truth: dict[str, tuple[str, str]]) -> list[str]:
    """One table row: method, setting, pairs predicted, precision, recall, F1, then recall by copy kind."""
    by_photo: dict[str, list[str]] = {}
    for name, (photo, _) in truth.items():
        by_photo.setdefault(photo, []).append(name)
    true = pairs_of(list(by_photo.values()))
    hits = len(pred & true)
    p, r = hits / max(len(pred), 1), hits / len(true)
    f1 = 2 * p * r / max(p + r, 1e-12)
    kinds = [np.mean([tuple(sorted((f"{photo}.png", f"{photo}_{kind}.jpg"))) in pred for photo in by_photo])
             for kind in COPIES]
    return [method, setting, str(len(pred)), f"{p:.3f}", f"{r:.3f}", f"{f1:.3f}"] + [f"{k:.2f}" for k in kinds]


def print_table(rows: list[list[str]]) -> None:
    """Left-aligned columns under a header."""
    rows = [["method", "setting", "pairs", "precision", "recall", "F1"] + list(COPIES)] + rows
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)))


def main() -> None:
    """Build the data, train, calibrate, index, dedup, hash, and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_neardup"), help="emptied and rebuilt")
    ap.add_argument("--seed", type=int, default=0, help="photo split and training seed")
    ap.add_argument("--image-size", type=int, default=PHOTOS_ENCODER.image_size, help="encoder input side")
    args = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"| load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    data, model = args.workdir / "data", args.workdir / "photos.pt"
    train_names, test_photos = split_photos(args.seed)
    truth = build_test(test_photos, data / "test")
    tiles = build_training(train_names, data / "train")
    print(f"train photos ({len(train_names)}, {len(list(tiles.iterdir()))} tiles): {', '.join(train_names)}")
    print(f"test photos ({len(test_photos)}, {len(truth)} files): {', '.join(test_photos)}")

    enc = dataclasses.replace(PHOTOS_ENCODER, image_size=args.image_size)
    cfg = dataclasses.replace(PHOTOS_TRAINING, epochs=10_000, max_minutes=args.minutes, seed=args.seed,
                              device="cpu")
    print(f"encoder: {enc}\ntraining: {cfg}")
    t0 = time.perf_counter()
    trained = train(tiles, model, enc, cfg)
    best = trained.best or {}
    print(f"trained {trained.history[-1]['epoch']} epochs in {(time.perf_counter() - t0) / 60:.1f} min "
          f"({trained.stopped}); best epoch {best.get('epoch')}: one-shot {best.get('one_shot', float('nan')):.3f}, "
          f"roc_auc {best.get('roc_auc', float('nan')):.4f}")
    cal = calibrate(build_copies(tiles, data / "calibration", seed=args.seed), model, target_precision=0.999,
                    workers=0, device="cpu")
    print(f"calibration on copies of training tiles: best-F1 distance {cal['threshold_best_f1']:.4f} "
          f"(F1 {cal['best_f1']:.3f}), 99.9%-precision distance {cal['threshold_at_precision']:.4f} "
          f"(recall {cal['recall_at_threshold']:.3f}), {cal['pairs']} pairs")

    store, _ = index_folder(data / "test", args.workdir / "index", model, rebuild=True,
                            opts=EmbedOptions(workers=0, device="cpu"))
    with store:
        margin = default_margin(store)
        plain = find_duplicates(store, margin)
        strict = cal["threshold_at_precision"]
        demo = find_duplicates(store, min(strict, margin), margin, linkage="complete")
    rows = [score_row("siamsearch", f"dedup default: margin {margin:.3f}, single", dedup_pairs(plain, ("duplicate",)),
                      truth),
            score_row("siamsearch", f"duplicate <= {min(strict, margin):.3f}, complete",
                      dedup_pairs(demo, ("duplicate",)), truth),
            score_row("siamsearch", f" + review <= {margin:.3f}", dedup_pairs(demo, ("duplicate", "review")), truth),
            score_row("imagehash", f"phash hamming <= {PHASH_BITS}/64", phash_pairs(data / "test", sorted(truth),
                                                                                    PHASH_BITS), truth)]
    print(f"\npairwise scores on {len(truth)} test files; right-hand columns: recall of original-copy pairs by kind")
    print_table(rows)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min after data; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
