"""Same-identity check on held-out data: Omniglot's unseen alphabets and AT&T's unseen people, recipe by recipe.

Omniglot (../shared/data/omniglot_background): six whole alphabets held out for the test (20% of 30, seed 0);
20-way one-shot over --episodes episodes whose 20 characters all come from one test alphabet (Lake et al.'s and
Koch et al.'s protocol), measured by siamsearch.evaluate, with P@1 and verification ROC AUC. AT&T faces
(../shared/data/att_faces): 10 of the 40 people held out for the test (seed 0); P@1, ROC AUC and 10-way one-shot
on the 10, then the same on a copy of their photos under strong simulated lighting (each photo raised to a gamma
drawn log-uniformly in 0.3-3, then shaded from full light on one random side down to 15-50% on the other).
Training sees a folder of links to the other identities only (the test ones are not in it), and picks its best
epoch on a validation split of *those* (VALIDATION: 10% of the other alphabets, 20% of the other people), so no
choice is made on the scored data.

Rows: `auto`, the recipe `siamsearch train FOLDER` chooses with no flags (glyphs for Omniglot, faces for AT&T);
`identities`, the former default (small net from scratch, 64 px); `frozen`, the ImageNet EfficientNet-Lite0 with
no training (its pooled features, L2-normalised), where it applies. Trained rows stop on --minutes (the same for
both); the minutes column is the training time it took. The machine's load changes how many steps a minute buys.

    .venv/bin/python scripts/bench_identity.py                       # both, 15 min per trained row (about 1 h)
    .venv/bin/python scripts/bench_identity.py --minutes 2 --episodes 1000 --only faces   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from siamsearch.core.checkpoint import load_checkpoint, save_model
from siamsearch.commands import train_folder
from siamsearch.core.config import EncoderConfig, Runtime, TrainConfig, parse_unfreeze
from siamsearch.evaluate import evaluate
from siamsearch.core.images import identity_of, load_image, scan_images
from siamsearch.core.model import build_encoder
from siamsearch.training.sampling import split_folder
from siamsearch.training.settings import value_of
from siamsearch.training.recipes import choose
from siamsearch.training.loop import Quiet

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = {"omniglot": {"val_group_depth": 1, "val_fraction": 0.2}, "faces": {"val_fraction": 0.25}}  # the test split
VALIDATION = {"omniglot": {"val_group_depth": 1, "val_fraction": 0.1}, "faces": {"val_fraction": 0.2}}  # of the rest
FOLDERS = {"omniglot": "omniglot_background", "faces": "att_faces"}
WAYS = {"omniglot": 20, "faces": 10}


def split_links(root: Path, kind: str, seed: int, work: Path) -> tuple[Path, Path]:
    """(training folder, test folder) of links to root's top folders: the test one holds the identities that
    SPLITS would hold out (whole alphabets, or people), the training one all the others."""
    found = scan_images(root).images
    names, _, test, _ = split_folder(found, root, TrainConfig(seed=seed, **SPLITS[kind]))
    held = {Path(names[i]).parts[0] for i in test}
    folders = {"train": work / "train", "test": work / "test"}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for top in sorted({Path(name).parts[0] for name in names}):
        (folders["test" if top in held else "train"] / top).symlink_to(root / top, target_is_directory=True)
    return folders["train"], folders["test"]


def relit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A grey photo under harsh light: gamma log-uniform in 0.3-3, then shaded towards one random side."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = x ** np.exp(rng.uniform(np.log(0.3), np.log(3.0)))
    h, w = x.shape
    angle, floor = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5)
    yy, xx = np.mgrid[0:h, 0:w]
    along = np.cos(angle) * (xx / (w - 1) - 0.5) + np.sin(angle) * (yy / (h - 1) - 0.5)
    t = (along - along.min()) / (along.max() - along.min())
    return Image.fromarray(np.clip(255 * x * (1 - (1 - floor) * t), 0, 255).astype(np.uint8), "L")


def relit_folder(root: Path, out: Path, seed: int) -> Path:
    """The test people's photos under simulated lighting, as an identity folder of their own."""
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for path in scan_images(root).images:
        target = out / str(identity_of(path, root)) / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        relit(load_image(path, channels=1), rng).save(target)
    return out


def parsed(settings: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as options: VALUE read as JSON (numbers, true, lists), else kept as a string."""
    out = {}
    for item in settings:
        key, _, value = item.partition("=")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def options(name: str, kind: str, minutes: float, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """What `siamsearch train --recipe NAME --max-minutes M --seed S` with VALIDATION's flags passes on, and
    the --set options (auto row only), as their flags would."""
    given = {"max_minutes": minutes, "seed": seed, **VALIDATION[kind], **(settings if name == "auto" else {})}
    if isinstance(given.get("augment"), str):
        given["augment"] = value_of("augment", given["augment"])  # a preset's name, as --set takes it
    if isinstance(given.get("unfreeze"), list):
        given["unfreeze"] = parse_unfreeze(given["unfreeze"])
    return given


def frozen(root: Path, kind: str, out: Path, seed: int) -> float:
    """The ImageNet trunk untrained: its pooled 1280 features as they are (head none); 0 minutes."""
    enc = EncoderConfig(backbone="efficientnet_lite0", pretrained=True, image_size=128, dim=1280, head="none",
                        channels=1)
    model = build_encoder(enc).eval()
    save_model(out, model, TrainConfig(seed=seed, **VALIDATION[kind]))
    return 0.0


def trained(root: Path, name: str, kind: str, out: Path, minutes: float, seed: int,
            settings: dict[str, Any]) -> float:
    """Train the recipe within `minutes` as `siamsearch train` does; the minutes it took."""
    choice, result = train_folder(root, out, options(name, kind, minutes, seed, settings), recipe=name,
                                  runtime=Runtime(device="cpu"), observer=Quiet(), force=True)
    ckpt = load_checkpoint(out)
    print(f"  {kind} {choice.name}: {ckpt.encoder}\n    {ckpt.train}", flush=True)
    best = result.best or {}
    epochs = sum("whitened" not in record for record in result.history)  # the whitening's record ends the history
    print(f"    {epochs} epochs ({result.stopped}), best epoch {best.get('epoch')}"
          + (", then the learned whitening" if "whitened" in best else ""), flush=True)
    return result.history[-1]["minutes"] if result.history else float("nan")


def scores(test: Path, kind: str, model: Path, episodes: int, seed: int, work: Path) -> list[str]:
    """one-shot, P@1 and ROC AUC on the test identities; for faces, the same under simulated lighting."""
    m = evaluate(test, model, ways=WAYS[kind], episodes=episodes, seed=seed, runtime=Runtime(device="cpu"),
                 episode_group_depth=SPLITS[kind].get("val_group_depth", 0)).metrics
    row = [f"{m['one_shot']:.4f}", f"{m['precision_at_1']:.4f}", f"{m['roc_auc']:.4f}"]
    if kind != "faces":
        return row + ["", ""]
    lit = relit_folder(test, work / "relit", seed)
    d = evaluate(lit, model, ways=WAYS[kind], episodes=episodes, seed=seed, runtime=Runtime(device="cpu")).metrics
    return row + [f"{d['precision_at_1']:.4f}", f"{d['roc_auc']:.4f}"]


def print_table(rows: list[list[str]]) -> None:
    """Left-aligned columns under a header."""
    rows = [["data", "recipe", "train min", "one-shot", "P@1", "ROC AUC", "lit P@1", "lit ROC AUC"]] + rows
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)))


def main() -> None:
    """Train and score every row, then print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget of each trained row")
    ap.add_argument("--episodes", type=int, default=5000, help="one-shot episodes")
    ap.add_argument("--only", choices=tuple(FOLDERS), help="one dataset")
    ap.add_argument("--recipes", default="auto,identities,frozen", help="rows, comma-separated")
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding omniglot_background and att_faces")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_identity"), help="models and relit photos")
    ap.add_argument("--seed", type=int, default=0, help="split, training and episode seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an option for the auto row, as its train flag (loss=ntxent, unfreeze='[\"2:head\"]')")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"(load average {os.getloadavg()[0]:.1f})")
    rows = []
    for kind in [args.only] if args.only else list(FOLDERS):
        root = args.data / FOLDERS[kind]
        train_root, test_root = split_links(root, kind, args.seed, args.workdir / kind)
        chosen = choose(scan_images(train_root).images, train_root).name
        for name in args.recipes.split(","):
            model = args.workdir / f"{kind}_{name}.pt"
            model.parent.mkdir(parents=True, exist_ok=True)
            minutes = (frozen(train_root, kind, model, args.seed) if name == "frozen"
                       else trained(train_root, name, kind, model, args.minutes, args.seed, parsed(args.set)))
            label = f"auto ({chosen})" + "".join(f" {x}" for x in args.set) if name == "auto" else name
            rows.append([kind, label, f"{minutes:.1f}",
                         *scores(test_root, kind, model, args.episodes, args.seed, args.workdir / kind)])
            print("  " + "  ".join(rows[-1]), flush=True)
    print(f"\none-shot: {WAYS['omniglot']}-way within one test alphabet (omniglot), {WAYS['faces']}-way (faces); "
          f"{args.episodes} episodes, seed {args.seed}")
    print_table(rows)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
