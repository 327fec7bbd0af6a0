"""Sample data made on the spot, with no download: photos with planted copies, digits, dead leaves.

What the demo, the benchmarks and the tests build their folders from:
  * photos: scikit-image's bundled sample photos, tiles of them, and copies of them made the way a
    collection gets near-duplicates (COPIES: resized, cropped, JPEG-recompressed, brighter, grayscale,
    rotated, a heavy crop with a caption); calibration folders of labelled copies (build_copies).
  * digits: scikit-learn's handwritten digits as an identity folder (build_digits).
  * dead leaves: procedural images, unlimited unlabelled training pictures. A dead-leaves image is a
    stack of occluding shapes whose sizes follow a power law (r^-3), the scale statistics of natural
    images; shapes are flat, striped or speckled. Baradad et al. (2021, "Learning to See by Looking at
    Noise") show that contrastive training on such images learns features that transfer to real photos.
    Added to a small self-supervised training folder (each file is its own identity), they keep a small
    encoder from memorising a few hundred tiles: scripts/bench_neardup.py trains on them beside tiles.

Photos and digits need the demo extra (scikit-image, scikit-learn), imported only when called.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

DIGIT_SIZE = 32
# Photos bundled inside scikit-image (no download); `cat` is left out: it is chelsea again.
# Left out as well: gravel (at 32 px the same texture as grass) and colorwheel (a bright disc on black,
# like retina): pairs a 32 px encoder trained for a minute cannot tell apart.
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "horse",
          "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
          "text")
# The rest of scikit-image's photos, and scikit-learn's two: with PHOTOS, the duplicate-free background.
EXTRA_PHOTOS = ("gravel", "colorwheel")
SKLEARN_PHOTOS = ("china", "flower")
BACKGROUND_GRIDS = (1, 2, 3)  # each background photo whole and cut 2x2 and 3x3: 14 identities a photo
PHOTO_SIDE = 384  # originals are stored with this longer side: small files, fast to decode
MIN_DETAIL = 10.0  # luminance standard deviation (of 255) below which a tile is near-blank


def _rotate(img: Image.Image) -> Image.Image:
    """Turned by 4 degrees and cropped back inside the picture, as a scanner or phone might."""
    turned = img.rotate(4, resample=Image.Resampling.BILINEAR, expand=False)
    return ImageOps.crop(turned, border=round(0.04 * max(img.size)))


def _jpeg(img: Image.Image) -> Image.Image:
    """Recompressed at JPEG quality 25: visible blocks, same picture."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=25)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop_with_text(img: Image.Image) -> Image.Image:
    """Half the area (71% of each side, from the top left quarter inwards) with a caption over its lower part."""
    w, h = round(img.width * 0.71), round(img.height * 0.71)
    x0, y0 = (img.width - w) // 3, (img.height - h) // 3
    out = img.crop((x0, y0, x0 + w, y0 + h)).convert("RGB")
    font = ImageFont.load_default(size=max(8, h // 8))
    ImageDraw.Draw(out).text((w // 10, h * 7 // 10), "siamsearch 2024", fill=(255, 255, 0), font=font,
                             stroke_width=1, stroke_fill=(0, 0, 0))
    return out


# How planted copies are made: each is applied to two different photos.
COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized": lambda im: im.resize((im.width * 2 // 5, im.height * 2 // 5), Image.Resampling.BILINEAR),
    "cropped": lambda im: ImageOps.crop(im, border=(im.width // 12, im.height // 12)),
    "jpeg": _jpeg,
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "rotated": _rotate,
    "cropped_text": _crop_with_text,
}

def build_digits(folder: Path, test_fraction: float = 1 / 3, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's digits as 32 px grayscale PNGs in train/<digit>/ and test/<digit>/ folders.

    Returns:
        (train folder, test folder); every digit has images in both.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    rng = np.random.default_rng(seed)
    test = np.zeros(len(pixels), dtype=bool)
    for d in range(10):
        members = np.flatnonzero(digits.target == d)
        test[rng.choice(members, size=round(len(members) * test_fraction), replace=False)] = True
    for i, (img, d) in enumerate(zip(pixels, digits.target)):
        target = folder / ("test" if test[i] else "train") / str(d) / f"{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BICUBIC).save(target)
    return folder / "train", folder / "test"


def photo_from_array(arr: np.ndarray) -> Image.Image:
    """A bundled (H, W[, C]) uint8 or bool sample image as RGB, longer side PHOTO_SIDE."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
    return img


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled sample images (a skimage.data function name) as photo_from_array."""
    import skimage.data

    return photo_from_array(np.asarray(getattr(skimage.data, name)()))


def sklearn_photo(name: str) -> Image.Image:
    """One of scikit-learn's two bundled sample photos (china, flower) as photo_from_array."""
    from sklearn.datasets import load_sample_image

    return photo_from_array(load_sample_image(f"{name}.jpg"))


def background_photos() -> dict[str, Image.Image]:
    """Every bundled photo by name: scikit-image's PHOTOS and EXTRA_PHOTOS, scikit-learn's SKLEARN_PHOTOS.

    No two are copies of each other, so every pair across them is a pair of distinct images.
    """
    return ({name: sample_photo(name) for name in PHOTOS + EXTRA_PHOTOS}
            | {name: sklearn_photo(name) for name in SKLEARN_PHOTOS})


def build_background(folder: Path, grids: Sequence[int] = BACKGROUND_GRIDS) -> Path:
    """The duplicate-free background a near-duplicate model is calibrated on, as a labelled folder.

    Each background photo, whole and cut into each grid, is an identity of its original and one copy per
    COPIES kind (build_copies): folder/<photo>/<photo>_g<grid>_<tile>/. With --group-depth 1 a photo is a
    group, so the distinct pairs are the pairs across photos. A user's folder cannot stand in for it: it holds
    the very copies dedup looks for, and they would count as distinct images.
    """
    for name, img in background_photos().items():
        tiles = folder / ".tiles" / name
        tiles.mkdir(parents=True, exist_ok=True)
        for grid in grids:
            save_tiles(img, f"g{grid}", tiles, grid)
        build_copies(tile_files(tiles), folder / name, count=len(tile_files(tiles)))
    return folder


def save_tiles(img: Image.Image, stem: str, folder: Path, tiles: int) -> None:
    """A tiles x tiles grid of img as folder/<stem>_<row><col>.png, the names build_copies picks up."""
    w, h = img.width // tiles, img.height // tiles
    for r in range(tiles):
        for c in range(tiles):
            img.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)).save(folder / f"{stem}_{r}{c}.png")


def build_photos(folder: Path, tiles: int = 3, seed: int = 0) -> tuple[Path, Path, dict[str, str]]:
    """A photo collection with planted copies, and an unlabelled training folder of photo tiles.

    The collection holds every sample photo as PNG plus, for each kind in COPIES, a JPEG copy of
    two photos. The training folder holds a tiles x tiles grid of each photo (no copies): a
    self-supervised model learns from it what stays the same under crops, colour and blur.

    Returns:
        (collection folder, training folder, planted: copy file name → original file name).
    """
    collection, training = folder / "photos", folder / "photo_tiles"
    collection.mkdir(parents=True, exist_ok=True)
    training.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    copy_of = dict(zip(rng.permutation(len(PHOTOS)).tolist(), [kind for kind in COPIES for _ in range(2)]))
    planted = {}
    for i, name in enumerate(PHOTOS):
        img = sample_photo(name)
        img.save(collection / f"{name}.png")
        img.save(training / f"{name}.png")
        save_tiles(img, name, training, tiles)
        if i in copy_of:
            kind = copy_of[i]
            COPIES[kind](img).convert("RGB").save(collection / f"{name}_{kind}.jpg", quality=90)
            planted[f"{name}_{kind}.jpg"] = f"{name}.png"
    return collection, training, planted


def _has_detail(path: Path) -> bool:
    """False for a near-blank tile (sky, paper, black border): its copies are no longer an identity of its own."""
    return float(np.asarray(Image.open(path).convert("L"), np.float32).std()) >= MIN_DETAIL


def tile_files(folder: Path) -> list[Path]:
    """The tiles save_tiles wrote into folder, in name order."""
    return sorted(folder.glob("*_[0-9][0-9].png"))


def build_copies(tiles: Sequence[Path], folder: Path, count: int = 60, seed: int = 0) -> Path:
    """A labelled calibration folder: up to `count` of the tiles, each with one copy of every COPIES kind.

    Each tile is an identity (<tile's folder>_<tile>/original.png, <kind>.jpg), so `calibrate` learns from
    it how far a copy may be from its original; the collection's photos themselves are never used.
    Near-blank tiles are left out: two of them, brightened to white, are the same image under two labels.
    """
    tiles = [t for t in tiles if _has_detail(t)]
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(tiles), size=min(count, len(tiles)), replace=False):
        img = Image.open(tiles[i]).convert("RGB")
        target = folder / f"{tiles[i].parent.name}_{tiles[i].stem}"
        target.mkdir(parents=True, exist_ok=True)
        img.save(target / "original.png")
        for kind, make in COPIES.items():
            make(img).convert("RGB").save(target / f"{kind}.jpg", quality=90)
    return folder


# ---- dead leaves ------------------------------------------------------------------------------

SHAPES = ("ellipse", "rectangle", "triangle")
MIN_RADIUS = 3.0  # pixels at the generated side


def leaf_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """n radii from the density r^-3 on [r_min, r_max] (inverse CDF), as in the dead-leaves model."""
    u = rng.random(n)
    return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def _fill(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float colours for one leaf: flat, a sine grating between two colours, or speckle."""
    a, b = rng.random(3), rng.random(3)
    kind = rng.random()
    if kind < 0.5:
        return np.broadcast_to(a, (*shape, 3))
    if kind < 0.8:
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        theta, period = rng.uniform(0, np.pi), rng.uniform(2.0, 16.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6.3))
    else:
        t = (rng.random(shape) < rng.uniform(0.2, 0.8)).astype(np.float64)
    return a + t[..., None] * (b - a)


def _mask(rng: np.random.Generator, kind: str, r: float, cx: float, cy: float,
          xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Boolean mask of one rotated shape of radius r centred at (cx, cy), over the grid (xx, yy)."""
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    a, b = r, r * rng.uniform(0.4, 1.0)
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    return (v <= b) & (v + b >= 2 * b * np.abs(u) / a)  # isosceles triangle, apex at v = -b


def dead_leaves(rng: np.random.Generator, side: int = 128, leaves: int = 200) -> Image.Image:
    """One RGB dead-leaves image: `leaves` shapes painted back to front over a background fill."""
    canvas = _fill(rng, (side, side)).copy()
    for r, kind in zip(leaf_radii(rng, leaves, MIN_RADIUS, side / 2), rng.choice(SHAPES, size=leaves)):
        cx, cy = rng.uniform(-r / 2, side + r / 2, size=2)
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, side))
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, side))  # never empty: the centre is within r/2 of the canvas
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask = _mask(rng, str(kind), r, cx, cy, xx, yy)
        canvas[y0:y1, x0:x1][mask] = _fill(rng, mask.shape)[mask]
    return Image.fromarray((canvas * 255).round().astype(np.uint8), "RGB")


def write_dead_leaves(folder: Path, count: int, side: int = 128, seed: int = 0) -> Path:
    """`count` dead-leaves PNGs in folder (leaves_00000.png, ...): a self-supervised training set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        dead_leaves(rng, side).save(folder / f"leaves_{i:05d}.png")
    return folder
