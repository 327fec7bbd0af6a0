"""Same-identity check on held-out data: Omniglot's unseen alphabets and AT&T's unseen people, recipe by recipe.

Omniglot (../shared/data/omniglot_background): six whole alphabets held out (--val-group-depth 1, 20% of 30,
seed 0); 20-way one-shot over --episodes episodes whose 20 characters all come from one held-out alphabet (Lake
et al.'s and Koch et al.'s protocol), measured by siamsearch.evaluate (`siamsearch eval --held-out`), with P@1 and
verification ROC AUC. AT&T faces (../shared/data/att_faces): 10 of the 40 people held out (--val-fraction 0.25,
seed 0), trained on the other 30; P@1, ROC AUC and 10-way one-shot on the 10, then the same on a copy of their
photos under strong simulated lighting (each photo raised to a gamma drawn log-uniformly in 0.3-3, then shaded
from full light on one random side down to 15-50% on the other), which no training sees.

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
import torch
from PIL import Image

from siamsearch.checkpoint import load_checkpoint, save_model
from siamsearch.commands import train_folder
from siamsearch.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig, parse_unfreeze
from siamsearch.evaluate import evaluate, held_out_images
from siamsearch.images import identity_of, load_image, scan_images
from siamsearch.model import build_encoder
from siamsearch.recipes import choose
from siamsearch.train import Quiet

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = {"omniglot": {"val_group_depth": 1, "val_fraction": 0.2}, "faces": {"val_fraction": 0.25}}
FOLDERS = {"omniglot": "omniglot_background", "faces": "att_faces"}
WAYS = {"omniglot": 20, "faces": 10}


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


def relit_folder(root: Path, model: Path, out: Path, seed: int) -> Path:
    """The held-out people's photos under simulated lighting, as an identity folder of their own."""
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for path in held_out_images(scan_images(root).images, root, load_checkpoint(model)):
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
    """What `siamsearch train --recipe NAME --max-minutes M --seed S` with the dataset's split flags passes on, and
    the --set options (auto row only), as their flags would."""
    given = {"max_minutes": minutes, "seed": seed, **SPLITS[kind], **(settings if name == "auto" else {})}
    if isinstance(given.get("augment"), str):
        given["augment"] = AUGMENT_PRESETS[given["augment"]]
    if isinstance(given.get("unfreeze"), list):
        given["unfreeze"] = parse_unfreeze(given["unfreeze"])
    return given


def frozen(root: Path, kind: str, out: Path, seed: int) -> float:
    """The ImageNet trunk untrained: its pooled 1280 features through an identity projection; 0 minutes."""
    enc = EncoderConfig(backbone="efficientnet_lite0", pretrained=True, image_size=128, dim=1280, head="linear",
                        channels=1)
    model = build_encoder(enc).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(1280))
        model.head.bias.zero_()
    save_model(out, model, TrainConfig(seed=seed, **SPLITS[kind]))
    return 0.0


def trained(root: Path, name: str, kind: str, out: Path, minutes: float, seed: int,
            settings: dict[str, Any]) -> float:
    """Train the recipe within `minutes` as `siamsearch train` does; the minutes it took."""
    choice, result = train_folder(root, out, options(name, kind, minutes, seed, settings), recipe=name,
                                  runtime=Runtime(device="cpu"), observer=Quiet(), force=True)
    ckpt = load_checkpoint(out)
    print(f"  {kind} {choice.name}: {ckpt.encoder}\n    {ckpt.train}", flush=True)
    best = result.best or {}
    print(f"    {len(result.history)} epochs ({result.stopped}), best epoch {best.get('epoch')}", flush=True)
    return result.history[-1]["minutes"] if result.history else float("nan")


def scores(root: Path, kind: str, model: Path, episodes: int, seed: int, work: Path) -> list[str]:
    """one-shot, P@1 and ROC AUC on the held-out identities; for faces, the same under simulated lighting."""
    m = evaluate(root, model, held_out=True, ways=WAYS[kind], episodes=episodes, seed=seed, device="cpu").metrics
    row = [f"{m['one_shot']:.4f}", f"{m['precision_at_1']:.4f}", f"{m['roc_auc']:.4f}"]
    if kind != "faces":
        return row + ["", ""]
    lit = relit_folder(root, model, work / "relit", seed)
    d = evaluate(lit, model, ways=WAYS[kind], episodes=episodes, seed=seed, device="cpu").metrics
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
        chosen = choose(scan_images(root).images, root).name
        for name in args.recipes.split(","):
            model = args.workdir / f"{kind}_{name}.pt"
            model.parent.mkdir(parents=True, exist_ok=True)
            minutes = (frozen(root, kind, model, args.seed) if name == "frozen"
                       else trained(root, name, kind, model, args.minutes, args.seed, parsed(args.set)))
            label = f"auto ({chosen})" + "".join(f" {x}" for x in args.set) if name == "auto" else name
            rows.append([kind, label, f"{minutes:.1f}",
                         *scores(root, kind, model, args.episodes, args.seed, args.workdir / kind)])
            print("  " + "  ".join(rows[-1]), flush=True)
    print(f"\none-shot: {WAYS['omniglot']}-way within one held-out alphabet (omniglot), {WAYS['faces']}-way (faces); "
          f"{args.episodes} episodes, seed {args.seed}")
    print_table(rows)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
