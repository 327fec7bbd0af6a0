"""A model's default dedup margin against its best one, on wallpapers with seven copies each (no filler).

The 28 raster wallpapers of Debian's gnome-backgrounds and ukui-wallpapers (scripts/bench_edits.wallpapers;
never the photos the built-in model was fitted on), downscaled to 1024 px, each with one copy per
siamsearch.core.samples.COPIES kind (resized, cropped, JPEG, brighter, grayscale, rotated, captioned half-area crop):
224 files, groups of 8; gnome's light and dark variants of one design count as one group. Pairwise precision,
recall and F1 of "distance within the margin" at the margin dedup picks for this collection (the model's
calibration, the collection-size rule) and at the best threshold any margin could give (an oracle: not what a
user gets). The closest distinct pairs show how much room the model leaves.

    .venv/bin/python scripts/bench_wallpapers.py                       # the built-in model
    .venv/bin/python scripts/bench_wallpapers.py --model photos.pt     # any model file
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_edits import design, wallpapers
from PIL import Image

from siamsearch.core import builtin
from siamsearch.core.calibration import collection_margin
from siamsearch.core.checkpoint import load_encoder
from siamsearch.core.embed import embed_paths
from siamsearch.core.samples import COPIES

SIDE = 1024


def write_collection(folder: Path, debs: Path) -> dict[str, str]:
    """Each wallpaper and its copies in `folder`; returns each file's group (its wallpaper's design)."""
    folder.mkdir(parents=True, exist_ok=True)
    group = {}
    for i, (name, path) in enumerate(sorted(wallpapers(debs).items())):
        img = Image.open(path).convert("RGB")
        img.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
        img.save(folder / f"w{i:02d}.png")
        group[f"w{i:02d}.png"] = design(name)
        for kind, make in COPIES.items():
            make(img).convert("RGB").save(folder / f"w{i:02d}_{kind}.jpg", quality=90)
            group[f"w{i:02d}_{kind}.jpg"] = design(name)
    return group


def scores(same: np.ndarray, distances: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Pairwise (precision, recall, F1) of calling every pair within margin a duplicate."""
    predicted = distances <= margin
    hits = int((predicted & same).sum())
    precision, recall = hits / max(1, int(predicted.sum())), hits / max(1, int(same.sum()))
    return precision, recall, 2 * precision * recall / max(1e-12, precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model file (default: the built-in model)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_wallpapers"))
    args = parser.parse_args()
    group = write_collection(args.workdir / "photos", args.workdir / "debs")
    model, ckpt = load_encoder(args.model or builtin.builtin_model(args.workdir / "cache"))
    found = embed_paths(model, ckpt.preprocess, sorted(args.workdir.joinpath("photos").glob("*")), workers=1)
    labels = np.array([group[p.name] for p in found.paths])
    upper = np.triu_indices(len(labels), 1)
    distances = np.sqrt(np.maximum(0, 2 - 2 * found.vectors @ found.vectors.T))[upper]
    same = (labels[:, None] == labels[None, :])[upper]
    chosen = collection_margin(ckpt.calibration, len(labels))
    best = max(np.linspace(0.05, 1.4, 271), key=lambda m: scores(same, distances, m)[2])
    print(f"{len(labels)} files, {int(same.sum())} true pairs; model {ckpt.name or args.model}")
    for what, margin in ((f"default margin ({chosen.rule})", chosen.margin), ("best F1 at any margin", best)):
        print(f"{what:40s} {margin:.3f}  precision %.3f  recall %.3f  F1 %.3f" % scores(same, distances, margin))
    print("closest distinct pairs:", " ".join(f"{d:.3f}" for d in np.sort(distances[~same])[:6]))


if __name__ == "__main__":
    main()
