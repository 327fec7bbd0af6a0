"""A user-shaped photo folder with known duplicates, for scripts/bench_userflow.py.

Originals are the raster wallpapers of two Debian packages (gnome-backgrounds, ukui-wallpapers), never the
scikit-image / scikit-learn photos the built-in model was fitted on. Each wallpaper, downscaled to a longer side
of WALLPAPER_SIDE, becomes two shots of "the same scene from a step aside": two crops that overlap by a third of
their area. Those shots, and gnome's light/dark (-l/-d) variants of one design, are similar-but-distinct: never
ground-truth duplicates. The full wallpaper itself is not in the folder: it would contain both shots and be
neither a copy nor distinct from them.

A seeded share of the files has a copy: chosen shots get one to three copies each, of the kinds in
siamsearch.core.samples.COPIES and in EDITS below (what users ask about), dealt so that every kind appears once
enough copies are made. Unrelated pictures fill the folder up to its size, so the copy rate is set by the filler:
with --filler photos (the default), the quarters of the photos of Ubuntu's wallpaper contests (Debian's
lomiri-wallpapers-16.04 and -20.04: four pictures of one scene that never overlap) and the AT&T faces (one photo
of each person, then a second, and so on: two photos of one person are distinct pictures), in a seeded order;
with --filler dead-leaves, procedural dead-leaves images (siamsearch.core.samples.write_dead_leaves), a stress
test no photo folder looks like. Originals are PNG or JPEG at random; copies are JPEG quality 90.

    .venv/bin/python scripts/bench_edits.py runs/edits --rate 0.2 --seed 0   # writes one folder, prints a summary
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from siamsearch.core.samples import COPIES, write_dead_leaves

PACKAGES = ("gnome-backgrounds", "ukui-wallpapers")
FILLER_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "att_faces"
FILLERS = ("photos", "dead-leaves")
RASTER = (".jpg", ".jpeg", ".png", ".webp")
WALLPAPER_SIDE = 1024
SHOT_FRACTION = 0.6  # each shot spans 60% of the longer side: two shots overlap by 20%, a third of a shot
FILLER_SIDE = 512
COPY_QUALITY = 90
MAX_COPIES = 3  # copies one chosen original may get


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px: no system fonts needed."""
    return ImageFont.load_default(size=max(8, size))


def _framed(img: Image.Image) -> Image.Image:
    """A passe-partout: a cream border of 8% of the longer side, as a framed print scanned or shared."""
    return ImageOps.expand(img, border=round(0.08 * max(img.size)), fill=(236, 228, 210))


def _letterboxed(img: Image.Image) -> Image.Image:
    """Padded with black bars to 16:9 (or, if already wider, bars above and below), as a video frame."""
    w, h = img.size
    size = (round(h * 16 / 9), h) if w * 9 < h * 16 else (w, round(w * 9 / 16))
    return ImageOps.pad(img, size, color=(0, 0, 0))


def _sticker(img: Image.Image) -> Image.Image:
    """A caption across the top and a round emoji-like sticker at the lower right, as a messaging app adds."""
    out = img.convert("RGB")
    draw, side = ImageDraw.Draw(out), min(out.size)
    draw.text((out.width // 20, out.height // 20), "best day ever!!", fill=(255, 255, 255), font=_font(side // 9),
              stroke_width=max(1, side // 150), stroke_fill=(0, 0, 0))
    r, cx, cy = side // 7, out.width * 3 // 4, out.height * 2 // 3
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 204, 0), outline=(0, 0, 0), width=max(1, r // 12))
    draw.text((cx, cy), "LOL", fill=(0, 0, 0), font=_font(r * 2 // 3), anchor="mm")
    return out


def _screenshot(img: Image.Image) -> Image.Image:
    """Pasted at 45% of the width into a white web page with a browser bar, a sidebar and lines of text."""
    page = Image.new("RGB", (1280, 860), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 1280, 70), fill=(222, 225, 230))
    draw.rounded_rectangle((140, 18, 1000, 52), radius=14, fill=(255, 255, 255))
    draw.text((160, 24), "https://photos.example.com/album/summer", fill=(60, 60, 60), font=_font(20))
    draw.rectangle((0, 70, 220, 860), fill=(245, 246, 248))
    for i, item in enumerate(("Home", "Albums", "Shared", "Favourites", "Trash")):
        draw.text((30, 110 + 48 * i), item, fill=(40, 40, 40), font=_font(22))
    shot = img.convert("RGB")
    shot.thumbnail((576, 576), Image.Resampling.LANCZOS)
    page.paste(shot, (260, 110))
    x = 260 + shot.width + 40
    draw.text((x, 110), "Summer 2023", fill=(20, 20, 20), font=_font(34))
    for j in range(8):
        draw.rectangle((x, 170 + 34 * j, 1240 - 60 * (j % 3), 184 + 34 * j), fill=(200, 200, 205))
    draw.text((260, 110 + shot.height + 20), "Shared by Alex - 24 likes - 3 comments", fill=(90, 90, 90),
              font=_font(20))
    return page


# The edits users ask about, beside siamsearch.core.samples.COPIES; each returns a new image.
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rotated90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "mirrored": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "framed": _framed,
    "letterboxed": _letterboxed,
    "sticker": _sticker,
    "screenshot": _screenshot,
    "stretched": lambda im: im.resize((round(im.width * 1.3), im.height), Image.Resampling.BICUBIC),
    "posterised": lambda im: ImageOps.posterize(im.convert("RGB"), 3),
}
KINDS: dict[str, Callable[[Image.Image], Image.Image]] = COPIES | EDITS


@dataclass
class Collection:
    """A written folder and its ground truth, keyed by file name (every file sits at the folder's top)."""

    folder: Path
    files: list[str]
    shots: list[str] = field(default_factory=list)  # the wallpaper shots; files neither shots nor copies are filler
    original_of: dict[str, str] = field(default_factory=dict)  # copy → the original it was made from
    kind_of: dict[str, str] = field(default_factory=dict)  # copy → its kind in KINDS
    distinct: list[tuple[str, str]] = field(default_factory=list)  # similar-but-distinct pairs of shots

    def groups(self) -> list[list[str]]:
        """Each original with its copies: the true duplicate groups (files in none are unique)."""
        members: dict[str, list[str]] = {}
        for copy, original in self.original_of.items():
            members.setdefault(original, [original]).append(copy)
        return list(members.values())


def wallpapers(debs: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """The packages' raster wallpapers by name ('gnome/adwaita-l'), downloaded and unpacked into `debs` if missing."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for package in packages:
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        root = debs / "unpacked" / package
        if not root.is_dir():
            root.mkdir(parents=True)
            subprocess.run(["dpkg", "-x", str(next(debs.glob(f"{package}_*.deb"))), str(root)], check=True)
        base = root / "usr" / "share" / "backgrounds"
        for path in sorted(base.rglob("*")):
            if path.suffix.lower() in RASTER:
                found[path.relative_to(base).with_suffix("").as_posix()] = path
    return found


def design(name: str) -> str:
    """gnome's light and dark variants share a design ('gnome/wood-l' → 'gnome/wood'); others are their own."""
    return name[:-2] if name.startswith("gnome/") and name[-2:] in ("-l", "-d") else name


def shots(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Two crops along the longer side, each SHOT_FRACTION of it, overlapping by a third of a crop's area."""
    w, h = img.size
    if w >= h:
        c = round(w * SHOT_FRACTION)
        return img.crop((0, 0, c, h)), img.crop((w - c, 0, w, h))
    c = round(h * SHOT_FRACTION)
    return img.crop((0, 0, w, c)), img.crop((0, h - c, w, h))


def load_shots(debs: Path) -> dict[str, Image.Image]:
    """Every wallpaper at a longer side of WALLPAPER_SIDE, cut into its two shots ('gnome/wood-l#a', '#b')."""
    out = {}
    for name, path in wallpapers(debs).items():
        img = Image.open(path).convert("RGB")
        img.thumbnail((WALLPAPER_SIDE, WALLPAPER_SIDE), Image.Resampling.LANCZOS)
        out[f"{name}#a"], out[f"{name}#b"] = shots(img)
    return out


def distinct_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every pair of shots of one design: the step-aside pair and, for gnome, across the light/dark variants."""
    by_design: dict[str, list[str]] = {}
    for name in names:
        by_design.setdefault(design(name.split("#")[0]), []).append(name)
    return [pair for members in by_design.values() for pair in itertools.combinations(sorted(members), 2)]


def deal_copies(chosen: int, copies: int, rng: np.random.Generator) -> list[list[str]]:
    """Kinds per chosen original: `copies` in all, 1..MAX_COPIES each, none twice, every kind before any repeats."""
    counts = np.ones(chosen, int)
    for i in rng.permutation(np.repeat(np.arange(chosen), MAX_COPIES - 1))[:copies - chosen]:
        counts[i] += 1
    deck = [kind for _ in range(-(-copies // len(KINDS)) + 1) for kind in rng.permutation(list(KINDS))]
    dealt = []
    for n in counts:
        mine: list[str] = []
        for _ in range(n):
            mine.append(deck.pop(next(i for i, kind in enumerate(deck) if kind not in mine)))
        dealt.append(mine)
    return dealt


def stem(name: str) -> str:
    """A shot's name as a file stem: 'gnome/wood-l#a' → 'gnome-wood-l-a'."""
    return name.replace("/", "-").replace("#", "-")


def filler_photos(debs: Path) -> list[Image.Image]:
    """The quarters of each contest photo (longer side WALLPAPER_SIDE), then the AT&T faces, one per person a round."""
    quarters = []
    for path in wallpapers(debs, FILLER_PACKAGES).values():
        img = Image.open(path).convert("RGB")
        img.thumbnail((WALLPAPER_SIDE, WALLPAPER_SIDE), Image.Resampling.LANCZOS)
        w, h = img.width // 2, img.height // 2
        quarters += [img.crop((x, y, x + w, y + h)) for y in (0, h) for x in (0, w)]
    people = sorted(FACES.glob("s*"), key=lambda d: int(d.name[1:]))
    faces = [Image.open(person / f"{i}.pgm").convert("RGB") for i in range(1, 11) for person in people]
    return quarters + faces


def write_filler(folder: Path, count: int, kind: str, debs: Path, seed: int) -> None:
    """`count` unrelated pictures (FILLERS), in filler_photos' order, as JPEG files filler_NNNN.jpg named in a
    seeded order."""
    if kind == "dead-leaves":
        write_dead_leaves(folder, count, FILLER_SIDE, seed)
        return
    pool = filler_photos(debs)
    if count > len(pool):
        raise SystemExit(f"--filler photos has {len(pool)} pictures, {count} needed: use fewer --files")
    for i, k in enumerate(np.random.default_rng(seed).permutation(count)):
        pool[k].save(folder / f"filler_{i:04d}.jpg", quality=92)


def build_collection(folder: Path, shots_by_name: dict[str, Image.Image], files: int, rate: float,
                     seed: int, filler: str = "photos", debs: Path = Path("runs/bench_userflow/debs")) -> Collection:
    """Write `files` files of which a share `rate` has a copy (originals and copies both count).

    A third of those files are chosen originals and two thirds their copies (at least one each); every shot is
    written; unrelated pictures (write_filler) make up the rest.
    """
    rng = np.random.default_rng(seed)
    names = sorted(shots_by_name)
    with_copy = max(2, round(rate * files))
    chosen_count = min(max(1, round(with_copy / 3)), len(names))
    copies = min(with_copy - chosen_count, chosen_count * MAX_COPIES)
    chosen = set(rng.choice(names, size=chosen_count, replace=False).tolist())
    kinds = iter(deal_copies(chosen_count, copies, rng))
    folder.mkdir(parents=True, exist_ok=True)
    out = Collection(folder, [])
    file_of = {}
    for name in names:
        img = shots_by_name[name]
        file_of[name] = f"{stem(name)}.{rng.choice(['png', 'jpg'])}"
        out.shots.append(file_of[name])
        img.save(folder / file_of[name], **({"quality": 95} if file_of[name].endswith(".jpg") else {}))
        if name in chosen:
            for kind in next(kinds):
                copy = f"{stem(name)}_{kind}.jpg"
                KINDS[kind](img).convert("RGB").save(folder / copy, quality=COPY_QUALITY)
                out.original_of[copy], out.kind_of[copy] = file_of[name], kind
    out.distinct = [(file_of[a], file_of[b]) for a, b in distinct_pairs(names)]
    if files > len(names) + len(out.original_of):
        write_filler(folder, files - len(names) - len(out.original_of), filler, debs, seed)
    out.files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return out


def main() -> None:
    """Write one collection and print what it holds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--debs", type=Path, default=Path("runs/bench_userflow/debs"))
    parser.add_argument("--files", type=int, default=240)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filler", choices=FILLERS, default="photos")
    args = parser.parse_args()
    c = build_collection(args.folder, load_shots(args.debs), args.files, args.rate, args.seed, args.filler, args.debs)
    kinds = sorted(set(c.kind_of.values()))
    print(f"{len(c.files)} files, {len(c.groups())} originals with {len(c.original_of)} copies "
          f"({len(kinds)} of {len(KINDS)} kinds), {len(c.distinct)} similar-but-distinct pairs")


if __name__ == "__main__":
    main()
