"""Eval preprocessing (PIL image → tensor) and batched training augmentation on the device."""

from __future__ import annotations

import functools
import io
import math
import string
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageChops, ImageDraw, ImageFont

from .config import LUMA, AugmentConfig, Preprocess
from .images import REDUCING_GAP

# Training images are cached a little larger than the input so random crops keep detail.
TRAIN_OVERSIZE = 1.15
BORDER_TOLERANCE = 24  # of 255: how far a pixel may be from the corner's colour and still belong to a plain border
BORDER_PROBE = 256  # side of the thumbnail a border is looked for in
MIN_INNER = 0.1  # share of the area a picture inside a border must keep; less, and the picture is mostly plain


def train_load_size(image_size: int) -> int:
    """Side of the cached training view: the eval view at a slightly higher resolution."""
    return int(round(image_size * TRAIN_OVERSIZE))


def trim_plain_border(img: Image.Image) -> Image.Image:
    """The picture inside a plain border of the top-left corner's colour (letterbox bars, a mount, a canvas),
    or img itself when it has none, or when almost all of it is that colour."""
    probe = img.copy()
    probe.thumbnail((BORDER_PROBE, BORDER_PROBE), Image.Resampling.NEAREST)
    far = np.asarray(ImageChops.difference(probe, Image.new(probe.mode, probe.size, probe.getpixel((0, 0)))))
    content = (far.max(axis=2) if far.ndim == 3 else far) > BORDER_TOLERANCE
    rows, cols = np.flatnonzero(content.mean(1) > 0.02), np.flatnonzero(content.mean(0) > 0.02)  # JPEG specks aside
    if not rows.size or not cols.size:
        return img
    sx, sy = img.width / probe.width, img.height / probe.height
    box = (int(cols[0] * sx), int(rows[0] * sy), math.ceil((cols[-1] + 1) * sx), math.ceil((rows[-1] + 1) * sy))
    if (box[2] - box[0]) * (box[3] - box[1]) < MIN_INNER * img.width * img.height:
        return img
    return img.crop(box)


def square_view(img: Image.Image, size: int, framing: str = "centre") -> torch.Tensor:
    """(C, size, size) uint8, the eval view: the centred square resized; with framing "trimmed", the centred
    square of the picture inside any plain border (config.EncoderConfig.framing)."""
    if framing == "trimmed":
        img = trim_plain_border(img)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std on the device, made once: a copy to a GPU per batch would wait for it each time."""
    with torch.inference_mode(False):  # plain tensors, whichever mode the first call came in
        return torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1)


def normalize(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 or [0, 1] float (B, C, H, W) → normalised float with the encoder's mean and std."""
    x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
    mean, std = _channel_stats(tuple(pre.mean), tuple(pre.std), x.device)
    return (x - mean) / std


def _affine_thetas(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample 2x3 sampling matrices: random resized crop, rotation, shear, shift and flip."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    area = uniform(*cfg.crop_scale)
    log_ratio = uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * uniform(-1, 1) + cfg.translate * 2 * uniform(-1, 1)
    cy = (1 - h) * uniform(-1, 1) + cfg.translate * 2 * uniform(-1, 1)
    angle = torch.deg2rad(uniform(-cfg.rotate, cfg.rotate))
    shear = torch.tan(torch.deg2rad(uniform(-cfg.shear, cfg.shear)))
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    cos, sin = angle.cos(), angle.sin()
    # A = diag(w, h) @ R(angle) @ [[1, shear], [0, 1]] @ diag(flip, 1)
    a11, a12 = cos, cos * shear - sin
    a21, a22 = sin, sin * shear + cos
    theta = torch.stack([
        torch.stack([w * a11 * flip, w * a12, cx], dim=1),
        torch.stack([h * a21 * flip, h * a22, cy], dim=1),
    ], dim=1)
    return theta


def _colour(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and random grayscale on [0, 1] images."""
    n, c = x.shape[:2]

    def factor(strength: float) -> torch.Tensor:
        return (1 + strength * (2 * torch.rand(n, generator=gen) - 1)).to(x.device, non_blocking=True).view(n, 1, 1, 1)

    if cfg.brightness:
        x = x * factor(cfg.brightness)
    gray = x.mean(dim=1, keepdim=True) if c == 1 else (
        LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3])
    if cfg.contrast:
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factor(cfg.contrast) + mean
    if c == 3 and cfg.saturation:
        x = (x - gray) * factor(cfg.saturation) + gray
    if c == 3 and cfg.grayscale_p:
        pick = (torch.rand(n, generator=gen) < cfg.grayscale_p).to(x.device, non_blocking=True).view(n, 1, 1, 1)
        x = torch.where(pick, gray.expand_as(x), x)
    return x.clamp(0, 1)


def _lighting(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample gamma (log-uniform in 1/gamma..gamma) and a linear shade towards one random side, on [0, 1] images."""
    n, side = x.shape[0], x.shape[-1]
    if cfg.gamma > 1:
        power = (math.log(cfg.gamma) * (2 * torch.rand(n, generator=gen) - 1)).exp()
        x = x.clamp(min=1e-4).pow(power.to(x).view(n, 1, 1, 1))
    if cfg.shade:
        angle, depth = 2 * math.pi * torch.rand(n, generator=gen), cfg.shade * torch.rand(n, generator=gen)
        ramp = torch.linspace(-1, 1, side, device=x.device)
        along = (angle.cos().to(x).view(n, 1, 1) * ramp.view(1, 1, side)
                 + angle.sin().to(x).view(n, 1, 1) * ramp.view(1, side, 1))  # (n, side, side), -1.4..1.4
        x = x * (1 - depth.to(x).view(n, 1, 1, 1) * ((along.unsqueeze(1) + 1.42) / 2.84))
    return x


def _blur(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur on a random subset of the batch (sigma up to 1.5% of the image side)."""
    pick = torch.rand(x.shape[0], generator=gen) < p
    if not pick.any():
        return x
    sigma = float(0.1 + torch.rand(1, generator=gen)) * max(1.0, 0.015 * x.shape[-1])
    radius = max(1, int(math.ceil(2 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    sub = x[pick.to(x.device)]
    sub = F.conv2d(F.pad(sub, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    sub = F.conv2d(F.pad(sub, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    out = x.clone()
    out[pick.to(x.device)] = sub
    return out


def _pad(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One image shrunk to 50-90% of its side and pasted at a random place on a plain colour: (C, S, S) in [0, 1]."""
    side = x.shape[-1]
    inner = max(1, int(side * float(0.5 + 0.4 * torch.rand(1, generator=gen))))
    top, left = (int(v) for v in torch.randint(0, side - inner + 1, (2,), generator=gen))
    out = torch.rand(x.shape[0], 1, 1, generator=gen).to(x).expand_as(x).clone()
    out[:, top:top + inner, left:left + inner] = F.interpolate(x[None], size=(inner, inner), mode="bilinear",
                                                               antialias=True, align_corners=False)[0]
    return out


def _to_pil(x: torch.Tensor) -> Image.Image:
    """(C, S, S) float [0, 1] → PIL image (L or RGB)."""
    arr = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")


def _from_pil(img: Image.Image, like: torch.Tensor) -> torch.Tensor:
    """PIL image → (C, S, S) float [0, 1] on `like`'s device."""
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(like.device, like.dtype).div_(255.0)


def _ink(rng: np.random.Generator, mode: str) -> int | tuple[int, ...]:
    """A random colour for PIL in this image mode."""
    return int(rng.integers(256)) if mode == "L" else tuple(int(v) for v in rng.integers(0, 256, 3))


def draw_text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random caption (3-12 letters, 8-25% of the side high) in PIL's default font, somewhere over the image."""
    side = min(img.size)
    text = "".join(rng.choice(list(string.ascii_letters + string.digits + " "), int(rng.integers(3, 13))))
    font = ImageFont.load_default(size=max(6, int(side * rng.uniform(0.08, 0.25))))
    out = img.copy()
    ImageDraw.Draw(out).text((int(rng.uniform(-0.1, 0.7) * img.width), int(rng.uniform(0, 0.85) * img.height)),
                             text, fill=_ink(rng, img.mode), font=font)
    return out


def draw_shapes(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One to three filled ellipses or rectangles, 10-35% of the side across, over the image."""
    side, out = min(img.size), img.copy()
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 4))):
        w, h = (side * rng.uniform(0.1, 0.35, 2)).astype(int)
        x0, y0 = int(rng.uniform(0, img.width - w)), int(rng.uniform(0, img.height - h))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=_ink(rng, img.mode))
    return out


def draw_page(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """img shrunk to 35-65% of the side and pasted into a light page of bars, blocks and lines of text, as a
    screenshot of a photo on a web page or in an app shows it."""
    w, h = img.size

    def grey(lo: int, hi: int) -> int | tuple[int, ...]:
        level = int(rng.integers(lo, hi))
        return level if img.mode == "L" else (level,) * 3

    page = Image.new(img.mode, img.size, grey(225, 256))
    draw = ImageDraw.Draw(page)
    bar = int(h * rng.uniform(0.04, 0.12))
    draw.rectangle((0, 0, w, bar), fill=grey(150, 240) if rng.random() < 0.7 else _ink(rng, img.mode))
    if rng.random() < 0.5:
        draw.rectangle((0, bar, int(w * rng.uniform(0.1, 0.25)), h), fill=grey(200, 250))
    for _ in range(int(rng.integers(4, 14))):
        x0, y0 = int(rng.uniform(0, 0.8) * w), int(rng.uniform(bar / h, 0.97) * h)
        draw.rectangle((x0, y0, x0 + int(w * rng.uniform(0.1, 0.5)), y0 + max(1, int(h * 0.015))), fill=grey(60, 200))
    scale = rng.uniform(0.35, 0.65)
    inner = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR)
    page.paste(inner, (int(rng.uniform(0, w - inner.width)), int(rng.uniform(bar, max(bar + 1, h - inner.height)))))
    return page if rng.random() < 0.5 else draw_text(page, rng)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """img recompressed as a JPEG of this quality."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert(img.mode)


def _pil_edits(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Page, text, shapes and JPEG on a random subset of the batch, each image drawn with its own seed from `gen`."""
    n = x.shape[0]
    chances = [cfg.page_p, cfg.text_p, cfg.shapes_p, cfg.jpeg_p]
    picks = torch.rand(len(chances), n, generator=gen) < torch.tensor(chances).view(-1, 1)
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=gen)
    lo, hi = cfg.jpeg_quality
    edits: list[Callable[[Image.Image, np.random.Generator], Image.Image]] = [
        draw_page, draw_text, draw_shapes, lambda im, rng: jpeg(im, int(rng.integers(lo, hi + 1)))]
    out = x.clone()
    for i in torch.nonzero(picks.any(0)).flatten().tolist():
        rng, img = np.random.default_rng(int(seeds[i])), _to_pil(x[i])
        for edit, picked in zip(edits, picks[:, i].tolist()):
            img = edit(img, rng) if picked else img
        out[i] = _from_pil(img, x)
    return out


def augment_batch(batch: torch.Tensor, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random views of a uint8 (B, C, L, L) batch → float (B, C, size, size) in [0, 1].

    One grid_sample does crop, resize, rotation, shear, shift and flip for the whole batch, so
    augmentation costs little next to the forward pass, on CPU and GPU alike; padding, then the copy
    edits (page, text, shapes, JPEG) go image by image through PIL, on the few images drawn for them.
    Randomness comes from `gen` (a CPU generator) so runs are reproducible.
    """
    x = batch.float().div_(255.0)
    theta = _affine_thetas(x.shape[0], cfg, gen).to(x.device, x.dtype, non_blocking=True)  # no wait for the GPU
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    for i in torch.nonzero(torch.rand(x.shape[0], generator=gen) < cfg.pad_p).flatten().tolist():
        x[i] = _pad(x[i], gen)
    x = _colour(x, cfg, gen)
    x = _lighting(x, cfg, gen) if cfg.gamma > 1 or cfg.shade else x
    x = _blur(x, cfg.blur_p, gen) if cfg.blur_p else x
    return _pil_edits(x, cfg, gen) if cfg.page_p or cfg.text_p or cfg.shapes_p or cfg.jpeg_p else x


def resize_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, L, L) → float [0, 1] (B, C, size, size), antialiased: the un-augmented view."""
    x = batch.float().div_(255.0)
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
