"""The one-command demo: real images that ship inside Python packages, trained and searched on a CPU.

Two small encoders (small backbone, about a minute each on two CPU cores):
  * digits: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 32 px PNGs), identities = the
    ten digits. Trained on two thirds of each digit with two whole digits held out for validation,
    evaluated on the other third, indexed and queried.
  * photos: scikit-image's bundled sample photos with planted near-duplicate copies (resized,
    cropped, JPEG-recompressed, brighter, grayscale, rotated). Trained self-supervised on the
    originals and tiles of them (no labels, never the copies), calibrated on synthetic copies of the
    tiles, then the collection is indexed and deduplicated and the groups are checked against the
    copies that were planted.

Needs the demo extra: pip install "siamsearch[demo]".
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from . import report
from .checkpoint import load_checkpoint
from .config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig
from .dedup import calibrated_margin, find_duplicates
from .evaluate import calibrate, evaluate
from .search import EmbedOptions, Searcher, index_folder
from .train import Observer, Quiet, train

DIGIT_SIZE = 32
# Photos bundled inside scikit-image (no download); `cat` is left out: it is chelsea again.
# Left out as well: gravel (at 32 px the same texture as grass) and colorwheel (a bright disc on black,
# like retina): pairs a 32 px encoder trained for a minute cannot tell apart.
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "horse",
          "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
          "text")
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


# How planted copies are made: each is applied to two different photos.
COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized": lambda im: im.resize((im.width * 2 // 5, im.height * 2 // 5), Image.Resampling.BILINEAR),
    "cropped": lambda im: ImageOps.crop(im, border=(im.width // 12, im.height // 12)),
    "jpeg": _jpeg,
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "rotated": _rotate,
}

DIGITS_ENCODER = EncoderConfig(backbone="small", dim=64, image_size=DIGIT_SIZE, channels=1)
DIGITS_TRAINING = TrainConfig(epochs=30, ids_per_batch=8, images_per_id=12, lr=3e-3, hinge=1.0,
                              augment=AUGMENT_PRESETS["characters"], val_fraction=0.2, ways=10, episodes=200)
PHOTOS_ENCODER = EncoderConfig(backbone="small", dim=64, image_size=32, channels=3, standardize=True)
PHOTOS_TRAINING = TrainConfig(loss="ntxent", epochs=200, ids_per_batch=64, images_per_id=2, lr=3e-3,
                              self_supervised=True, augment=AUGMENT_PRESETS["near-duplicates"],
                              val_fraction=0.2, ways=20, episodes=200)


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


def score_groups(groups: list[report.DupGroup], planted: dict[str, str]) -> dict[str, int]:
    """How dedup did against the planted copies.

    Returns:
        planted; found (copies grouped with their original), found_as_duplicate (and marked duplicate,
        not review); wrong_duplicate / wrong_review (members whose photo is not the kept file's).
    """
    out = dict.fromkeys(("found", "found_as_duplicate", "wrong_duplicate", "wrong_review"), 0)
    for g in groups:
        files = {g["keep"]: "duplicate"} | {m["path"]: m["status"] for m in g["members"]}
        for copy, original in planted.items():
            if copy in files and original in files:
                out["found"] += 1
                out["found_as_duplicate"] += files[copy] == files[original] == "duplicate"
        for m in g["members"]:
            if planted.get(m["path"], m["path"]) != planted.get(g["keep"], g["keep"]):
                out[f"wrong_{m['status']}"] += 1
    return {"planted": len(planted), "groups": len(groups)} | out


@dataclass
class DemoSummary:
    """What the demo built, measured and found, and where its files are."""

    workdir: Path
    minutes: float
    models: dict[str, Path]
    training: dict[str, dict[str, Any]]  # best validation epoch of each model
    eval_metrics: dict[str, float]  # digits model on the held-out third of every digit
    query_accuracy: float  # fraction of query neighbours showing the query's digit
    calibration: dict[str, Any]  # photo model's duplicate thresholds, from synthetic copies of tiles
    dedup: dict[str, int]  # score_groups: planted copies found, files grouped wrongly
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _digits(work: Path, minutes: float, obs: Observer, opts: EmbedOptions) -> dict[str, Any]:
    """Train, evaluate, plot, index and query the digits model; DemoSummary fields as a dict."""
    train_dir, test_dir = build_digits(work / "data" / "digits")
    model = work / "models" / "digits.pt"
    obs.message(f"training the digits encoder ({minutes:.1f} min)")
    trained = train(train_dir, model, DIGITS_ENCODER,
                    dataclasses.replace(DIGITS_TRAINING, max_minutes=minutes),
                    Runtime(device=opts.device, amp=False), observer=obs)
    obs.message("evaluating it on the held-out third of every digit")
    result = evaluate(test_dir, model, ways=10, workers=0, device=opts.device)
    files = {f"plot_{p.stem}": p for p in report.write_eval_report(result, load_checkpoint(model), work / "report")}
    obs.message("indexing the training digits and querying one test image of each digit")
    index_folder(train_dir, work / "indexes" / "digits", model, rebuild=True, opts=opts)[0].close()
    searcher = Searcher.open(work / "indexes" / "digits", opts=opts)
    results, _ = searcher.query_images([sorted((test_dir / str(d)).iterdir())[0] for d in range(10)], k=8)
    root = searcher.store.root
    searcher.store.close()
    files["query_html"] = report.query_page(results, root, work / "query.html", title="siamsearch demo: digits")
    files["query_sheet"] = report.contact_sheet(results, root, work / "query_sheet.png")
    hits = [n.identity == r.query.parent.name for r in results for n in r.neighbors]
    return {"best": trained.best or {}, "eval_metrics": result.metrics, "notes": result.notes,
            "query_accuracy": float(np.mean(hits)) if hits else 0.0, "files": files}


def _photos(work: Path, minutes: float, obs: Observer, opts: EmbedOptions) -> dict[str, Any]:
    """Train, calibrate, index and deduplicate the photos; DemoSummary fields as a dict."""
    photos, tiles, planted = build_photos(work / "data")
    copies = build_copies(tile_files(tiles), work / "data" / "photo_copies")
    model = work / "models" / "photos.pt"
    obs.message(f"training the photo encoder, self-supervised ({minutes:.1f} min)")
    trained = train(tiles, model, PHOTOS_ENCODER,
                    dataclasses.replace(PHOTOS_TRAINING, max_minutes=minutes),
                    Runtime(device=opts.device, amp=False), observer=obs)
    obs.message("calibrating it on synthetic copies of tiles, indexing the photos, finding duplicates")
    calibration = calibrate(copies, model, target_precision=0.999, workers=0, device=opts.device)
    review = calibrated_margin(calibration)  # `siamsearch dedup`'s default margin
    margin = min(calibration["threshold_at_precision"], review)  # "duplicate": 99.9% precision on the copies
    store, _ = index_folder(photos, work / "indexes" / "photos", model, rebuild=True, opts=opts)
    with store:  # grouped as `siamsearch dedup` groups them; members beyond the 99.9% margin are "review"
        found = find_duplicates(store, margin, review)
    groups = found.to_dict()["groups"]
    files = {"dedup_html": report.dedup_page(groups, work / "dedup.html", root=photos,
                                             title="siamsearch demo: photos")}
    curves = report.plot_training(load_checkpoint(model).history, work / "report" / "training_photos.png")
    files |= {"plot_training_photos": curves} if curves else {}
    return {"best": trained.best or {}, "calibration": calibration, "dedup": score_groups(groups, planted),
            "files": files}


def run_demo(workdir: Path | str, minutes: float = 2.0, observer: Observer | None = None,
             device: str = "auto") -> DemoSummary:
    """Build the data, train both encoders within about `minutes`, evaluate, index, query, dedup, report.

    Training takes 35% (digits) and 45% (photos) of the minutes; the rest goes to data, evaluation,
    indexes and pages. Everything is written under workdir: data/, models/, indexes/, report/,
    query.html, query_sheet.png and dedup.html.
    """
    t0, obs, work = time.perf_counter(), observer or Quiet(), Path(workdir).expanduser().resolve()
    opts = EmbedOptions(workers=0, device=device)
    obs.message("building demo data from scikit-learn digits and scikit-image sample photos")
    digits = _digits(work, 0.35 * minutes, obs, opts)
    photos = _photos(work, 0.45 * minutes, obs, opts)
    return DemoSummary(work, (time.perf_counter() - t0) / 60,
                       {"digits": work / "models" / "digits.pt", "photos": work / "models" / "photos.pt"},
                       {"digits": digits["best"], "photos": photos["best"]}, digits["eval_metrics"],
                       digits["query_accuracy"], photos["calibration"], photos["dedup"],
                       digits["files"] | photos["files"], digits["notes"])
