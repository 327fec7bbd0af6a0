"""Near-duplicate check on real photos: siamsearch's copies recipe at its default margin vs imagehash's phash.

It trains on other photos than it scores; scripts/bench_userflow.py runs the user's own flow instead (the
built-in model, and training on the very folder it then deduplicates).

The sample photos that ship inside scikit-image (siamsearch.core.samples.PHOTOS plus gravel and colorwheel) are
split by --seed into a training half and a test half; scikit-learn's china and flower join the test half.
The test folder holds each test original and one copy of it per samples.COPIES kind (resized, cropped, JPEG,
brighter, grayscale, rotated, a half-area crop with a caption): groups of 8. The copies recipe
(training.recipes.RECIPES["copies"], what `siamsearch train --self-supervised` uses) trains self-supervised for
--minutes on tiles of the training photos and --leaves procedural dead-leaves images; no test photo and no copy is seen.
calibrate(group_depth=1) on labelled copies of the training photos whole and of their tiles (131 identities, one
group per photo: about 490,000 pairs of distinct images across photos) writes thresholds and distance tails into
the model file; the
test folder is indexed and grouped by find_duplicates at commands.default_margin, the margin `siamsearch dedup`
uses without --margin (expected false pairs within 1 per 1,000 indexed images), kept linkage (the default); for
comparison, also at the balanced calibrated margin (best F1 on the calibration pairs), which ignores the size of
the index. The frozen-trunk row is the recipe's encoder before any training (ImageNet trunk, GeM with p = 3, the
linear projection at its seeded random initialisation, which keeps distances roughly, as a random projection
does), calibrated and scored the same way; the next row fits the recipe's learned whitening on it (train with
--epochs 0: each training image an identity of its augmented views), still with no SGD. phash (64 bits) pairs
images within PHASH_BITS bits, imagededup's default for phash. --distractors N adds N more dead-leaves images
(distinct by construction, none a copy of a photo) to a second index of the test folder, scored with the model
calibrated as above (on photos) and again calibrated also on copies of CALIBRATION_LEAVES other dead-leaves
images, as a collection made mostly of them needs.

Scores are pairwise: true pairs are all pairs of one group; predicted pairs are the pairs of files sharing a
dedup group (kept file and duplicates), or within the phash threshold. The columns by kind are the fraction of
originals paired with their copy of that kind.

    .venv/bin/python scripts/bench_neardup.py --seed 0 --minutes 10    # on 2 CPU cores
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
import torch
from PIL import Image

from siamsearch.core.calibration import calibrated_margin
from siamsearch.core.checkpoint import load_checkpoint, save_model
from siamsearch.commands import default_margin
from siamsearch.core.config import EncoderConfig, Runtime, TrainConfig, parse_unfreeze
from siamsearch.duplicates.dedup import DedupResult, find_duplicates
from siamsearch.evaluate import calibrate
from siamsearch.index.indexing import index_folder
from siamsearch.core.model import build_encoder
from siamsearch.core.samples import (
    COPIES,
    EXTRA_PHOTOS,
    PHOTOS,
    build_copies,
    photo_from_array,
    sample_photo,
    save_tiles,
    write_dead_leaves,
)
from siamsearch.training.loop import train
from siamsearch.training.recipes import RECIPES

GRIDS = (1, 2, 3, 4)  # training tiles: each photo whole, and cut into 2x2, 3x3 and 4x4
LEAVES = 1000  # procedural images (siamsearch.core.samples) beside the 300 photo tiles
CALIBRATION_LEAVES = 90  # dead-leaves identities in the calibration for an index of dead-leaves distractors
CALIBRATION_GRIDS = (1, 2, 3)  # calibration identities: each training photo whole and cut 2x2 and 3x3, 14 each
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
    folder.mkdir(parents=True, exist_ok=True)
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


def build_calibration(names: list[str], folder: Path, seed: int, leaves: int = 0) -> Path:
    """Labelled copies of each training photo whole and of its CALIBRATION_GRIDS tiles: folder/<photo>/<tile>/;
    with `leaves`, copies of that many dead-leaves images too, each its own group (folder/leaves_<i>/leaves/).

    Every tile is an identity and every photo a group (`calibrate --group-depth 1`): two tiles of one photo are
    distinct images, but the 3x3 tiles of gravel lie closer to one another than most copies do to their
    originals, and distinct photos of a collection are not like that; so only pairs across photos count as
    distinct. Dead leaves stay out: the procedural images are far more alike than distinct photos are, and a
    handful of their pairs would set the low tail, which the default margin reads, for the whole collection,
    unless the collection is made of them too (--distractors).
    """
    sources = folder.with_name(folder.name + "_sources")
    for name in names:
        img = sample_photo(name)
        for grid in CALIBRATION_GRIDS:
            (sources / name / f"grid{grid}").mkdir(parents=True)
            save_tiles(img, name, sources / name / f"grid{grid}", grid)
        tiles = sorted((sources / name).glob("grid*/*.png"))
        build_copies(tiles, folder / name, count=len(tiles), seed=seed)
    for i, leaf in enumerate(sorted(write_dead_leaves(sources / "leaves", leaves, side=192, seed=seed + 2000).iterdir())
                             if leaves else ()):
        build_copies([leaf], folder / f"leaves_{i:03d}", count=1, seed=seed)
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


def recipe(args: argparse.Namespace) -> tuple[EncoderConfig, TrainConfig]:
    """The copies recipe with this run's budget and seed, and any setting given on the command line."""
    enc, cfg = RECIPES["copies"].encoder, RECIPES["copies"].train
    enc = dataclasses.replace(enc, image_size=args.image_size or enc.image_size)
    given = {k: v for k, v in {"koleo": args.koleo, "backbone_lr": args.backbone_lr, "lr": args.lr,
                               "temperature": args.temperature, "freeze_backbone": args.freeze_backbone or None,
                               "unfreeze": parse_unfreeze(args.unfreeze) if args.unfreeze else None,
                               "finetune_lr": args.finetune_lr}.items() if v is not None}
    return enc, dataclasses.replace(cfg, epochs=10_000, max_minutes=args.minutes, seed=args.seed, **given)


def calibrated(model: Path, copies: Path, seed: int) -> None:
    """calibrate(group_depth=1) on a build_calibration folder: thresholds and distance tails into the model file."""
    cal = calibrate(copies, model, target_precision=0.999, seed=seed, group_depth=1,
                    runtime=Runtime(workers=0, device="cpu"))
    print(f"{model.name} calibrated on {copies.name} ({cal['tails']['different_pairs']:,} pairs of distinct images, "
          f"across groups): best-F1 distance "
          f"{cal['threshold_best_f1']:.4f} (F1 {cal['best_f1']:.3f})")


def trained_model(tiles: Path, model: Path, args: argparse.Namespace) -> None:
    """Self-supervised training with the copies recipe within --minutes."""
    enc, cfg = recipe(args)
    print(f"encoder: {enc}\ntraining: {cfg}")
    t0 = time.perf_counter()
    trained = train(tiles, model, enc, cfg, Runtime(device="cpu"))
    best = trained.best or {}
    epochs = sum("whitened" not in record for record in trained.history)  # the whitening's record ends the history
    print(f"trained {epochs} epochs (then the learned whitening) in {(time.perf_counter() - t0) / 60:.1f} min "
          f"({trained.stopped}); best epoch {best.get('epoch')}: roc_auc {best.get('roc_auc', float('nan')):.4f}, "
          f"one-shot {best.get('one_shot', float('nan')):.3f} on held-out tiles")


def frozen_model(model: Path, args: argparse.Namespace) -> None:
    """The recipe's encoder before training (ImageNet trunk, GeM, random linear projection), as a model file."""
    enc, cfg = recipe(args)
    torch.manual_seed(args.seed)  # the projection's random initialisation
    save_model(model, build_encoder(dataclasses.replace(enc, whiten=0)).eval(), cfg)


def whitened_model(tiles: Path, model: Path, args: argparse.Namespace) -> None:
    """The same untrained encoder with the recipe's learned whitening fitted on the training tiles: no SGD."""
    enc, cfg = recipe(args)
    t0 = time.perf_counter()
    train(tiles, model, enc, dataclasses.replace(cfg, epochs=0), Runtime(device="cpu"))
    print(f"whitening alone fitted in {(time.perf_counter() - t0) / 60:.1f} min")


def siamsearch_rows(method: str, folder: Path, index: Path, model: Path, photos: list[str],
                    balanced: bool = True) -> list[list[str]]:
    """Index `folder`, find duplicates at the default margin and linkage and score them; with `balanced`,
    also at the balanced calibrated margin (best F1 on the calibration pairs, capped), which ignores the index size."""
    store, _ = index_folder(folder, index, model, rebuild=True, runtime=Runtime(workers=0, device="cpu"))
    with store:
        chosen, n = default_margin(store), len(store)
        margins = {f"{n} files, margin {chosen.margin:.3f} (default: {chosen.rule}, "
                   f"{chosen.expected_false_pairs or 0:.2f} false pairs expected)": chosen.margin}
        if balanced:
            margin = calibrated_margin(load_checkpoint(model).calibration)
            margins[f"{n} files, margin {margin:.3f} (balanced best F1, not the default)"] = margin
        found = {setting: find_duplicates(store, margin) for setting, margin in margins.items()}
    return [score_row(method, setting, dedup_pairs(result, ("duplicate",)), photos) for setting, result in found.items()]


def with_distractors(test: Path, folder: Path, count: int, seed: int) -> Path:
    """The test files plus `count` dead-leaves images in folder/distractors/ (distinct, none a copy of a photo)."""
    shutil.copytree(test, folder)
    write_dead_leaves(folder / "distractors", count, seed=seed + 1000)
    return folder


def main() -> None:
    """Build the data, train, calibrate, index, dedup, hash, and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_neardup"), help="emptied and rebuilt")
    ap.add_argument("--seed", type=int, default=0, help="photo split and training seed")
    ap.add_argument("--image-size", type=int, help="encoder input side (default: the recipe's)")
    ap.add_argument("--koleo", type=float, help="KoLeo weight (default: the recipe's)")
    ap.add_argument("--lr", type=float, help="head learning rate (default: the recipe's)")
    ap.add_argument("--backbone-lr", type=float, help="trunk learning rate (default: the recipe's)")
    ap.add_argument("--temperature", type=float, help="NT-Xent temperature (default: the recipe's)")
    ap.add_argument("--freeze-backbone", action="store_true", help="train the head (and GeM's p) only")
    ap.add_argument("--unfreeze", nargs="*", help="EPOCH:BLOCK[,BLOCK], with --freeze-backbone")
    ap.add_argument("--finetune-lr", type=float, help="learning rate of unfrozen blocks")
    ap.add_argument("--leaves", type=int, default=LEAVES, help="dead-leaves images added to training")
    ap.add_argument("--distractors", type=int, default=0, help="dead-leaves images added to a second test index")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"(load average {os.getloadavg()[0]:.1f})")
    shutil.rmtree(args.workdir, ignore_errors=True)
    data, work = args.workdir / "data", args.workdir
    train_names, test_photos = split_photos(args.seed)
    files = build_test(test_photos, data / "test")
    tiles = build_training(train_names, data / "train", args.leaves, args.seed)
    copies = build_calibration(train_names, data / "calibration", args.seed)
    print(f"train photos ({len(train_names)}, {sum(1 for _ in tiles.glob('grid*/*.png'))} tiles) "
          f"and {args.leaves} dead-leaves images: {', '.join(train_names)}")
    print(f"test photos ({len(test_photos)}, {len(files)} files): {', '.join(test_photos)}")
    frozen_model(work / "frozen.pt", args)
    calibrated(work / "frozen.pt", copies, args.seed)
    whitened_model(tiles, work / "whitened.pt", args)
    calibrated(work / "whitened.pt", copies, args.seed)
    trained_model(tiles, work / "copies.pt", args)
    calibrated(work / "copies.pt", copies, args.seed)
    photos = list(test_photos)
    rows = [*siamsearch_rows("siamsearch copies recipe", data / "test", work / "index", work / "copies.pt", photos),
            *siamsearch_rows("frozen trunk, no training", data / "test", work / "index_frozen", work / "frozen.pt",
                             photos),
            *siamsearch_rows("frozen trunk + whitening, no SGD", data / "test", work / "index_whitened",
                             work / "whitened.pt", photos),
            score_row("imagehash", f"phash: hamming <= {PHASH_BITS}/64", phash_pairs(data / "test", files, PHASH_BITS),
                      photos)]
    if args.distractors:
        folder = with_distractors(data / "test", data / "test_distractors", args.distractors, args.seed)
        rows += siamsearch_rows(f"copies recipe + {args.distractors} distractors", folder,
                                work / "index_distractors", work / "copies.pt", photos, balanced=False)
        shutil.copy(work / "copies.pt", work / "copies_leaves.pt")  # the same weights, calibrated like the collection
        calibrated(work / "copies_leaves.pt", build_calibration(train_names, data / "calibration_leaves", args.seed,
                                                                 CALIBRATION_LEAVES), args.seed)
        rows += siamsearch_rows(f"+ {args.distractors} distractors, calibrated with leaves", folder,
                                work / "index_distractors_leaves", work / "copies_leaves.pt", photos, balanced=False)
    print(f"\npairwise scores on {len(files)} test files; by kind: recall of (original, copy) pairs")
    print_table(rows)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
