"""Finding images in folders and decoding one image safely; what a "bad file" is."""

from __future__ import annotations

import errno
import functools
import hashlib
import math
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pathspec
from PIL import Image, ImageOps

from .errors import NotFoundError, SiamsearchError, UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".pgm", ".ppm"})
# Scanned only when this Pillow decodes them: AVIF is built into Pillow 11.3+ wheels, HEIC needs the `formats` extra.
PLUGIN_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})
IGNORE_FILE = ".siamsearchignore"  # gitignore syntax, in the root of a scanned folder

ORIGINAL_SIZE = "siamsearch_original_size"  # (width, height) of the stored image, upright
ORIENTATION = 0x0112  # the EXIF tag
# Decompression-bomb guard: refuse anything above this many pixels (about 16k x 16k), checked as soon as the
# header is read, before any pixel is decoded. Pillow's own guard (89.5 MP) is off while decoding: this one
# names the size.
MAX_PIXELS = 250_000_000
# Pillow's default guard: larger images that are not JPEGs (which draft mode decodes reduced) are reduced
# right after decoding, so their copies (orientation, mode) stay small. Smaller ones decode as they always did.
FULL_DECODE_PIXELS = 89_478_485
# Shrinking is done in two steps: an integer box reduction down to at least this many times the target
# side, then an antialiased resize. A JPEG's decoder does the first step itself (draft mode), so a JPEG
# copy and a PNG original of one picture reach the network as the same pixels. Pillow's default gap, 2.0,
# left 0.6 gray levels of mean difference between scikit-image's grass as PNG and as JPEG at 48 px; 3.0
# ("indistinguishable from fair resampling in most cases", Pillow's docs) leaves 0.17, full decoding 0.09.
REDUCING_GAP = 3.0


class BadImageError(SiamsearchError):
    """An image that cannot be used; carries the path and a one-line reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    """A file that was skipped, and why; runs collect these and report them at the end."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        """{path, reason} for JSON."""
        return {"path": str(self.path), "reason": self.reason}


@functools.cache
def _register_plugins() -> None:
    """Let Pillow open HEIC files when pillow-heif (the `formats` extra) is installed; once per process."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


@functools.cache
def image_extensions() -> frozenset[str]:
    """The extensions a scan keeps: the common ones, plus HEIC and AVIF when a decoder for them is installed."""
    _register_plugins()
    Image.init()
    return IMAGE_EXTENSIONS | (PLUGIN_EXTENSIONS & Image.registered_extensions().keys())


def is_image_path(path: Path) -> bool:
    """True for a visible file with an image extension (content is checked only on decode)."""
    return path.suffix.lower() in image_extensions() and not path.name.startswith(".")


@dataclass(frozen=True)
class Selection:
    """Which files under a root a scan keeps: glob patterns (gitignore style) on the relative posix path.

    An empty include keeps every image; exclude and the root's .siamsearchignore drop files and whole folders.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, include: list[str] | None, exclude: list[str] | None) -> Selection | None:
        """The selection repeatable --include/--exclude flags ask for; None when neither is given."""
        return cls(tuple(include or ()), tuple(exclude or ())) if include or exclude else None


class _Rules:
    """A Selection compiled for one root, with its ignore file read."""

    def __init__(self, root: Path, selection: Selection) -> None:
        self.root = root
        self.include = _spec(selection.include, "--include") if selection.include else None
        ignore = root / IGNORE_FILE
        lines = ignore.read_text(errors="replace").splitlines() if ignore.is_file() else []
        self.exclude = _spec([*selection.exclude, *lines], "--exclude or " + IGNORE_FILE)

    def keeps_folder(self, path: Path) -> bool:
        """False for a folder that is excluded as a whole: it is not listed at all."""
        return not self.exclude.match_file(path.relative_to(self.root).as_posix() + "/")

    def keeps_file(self, path: Path) -> bool:
        """True for a file that is included (or no include was given) and not excluded."""
        rel = path.relative_to(self.root).as_posix()
        return (self.include is None or self.include.match_file(rel)) and not self.exclude.match_file(rel)


def _spec(patterns: list[str] | tuple[str, ...], where: str) -> pathspec.PathSpec:
    """Compile gitignore-style patterns; a malformed one is the user's error, in one line."""
    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"bad pattern in {where}: {exc}") from None


@dataclass
class Scan:
    """What a walk found: image files, what it could not use, and what it could not look into.

    unread holds folders that could not be listed and links and files that could not be followed (a
    broken link may have led to a folder on a disk that is not mounted): files there are out of sight,
    not necessarily gone.
    """

    images: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    unread: list[Path] = field(default_factory=list)
    listed: set[tuple[int, int]] = field(default_factory=set)  # (device, inode) of each image and folder met


def find_images(root: Path | str, selection: Selection = Selection()) -> list[Path]:
    """All image files under root, recursively, sorted; scan_images says which entries were skipped and why.

    Raises:
        NotFoundError: root does not exist or is not a folder.
    """
    return scan_images(root, selection).images


def scan_images(root: Path | str, selection: Selection = Selection()) -> Scan:
    """Regular image files under root, sorted; hidden entries are skipped, folder symlinks followed once.

    A folder reached twice (two links to it, or a bind mount showing it twice) is read once, and a file with two
    names (a hard link) is listed once, by (device, inode): moving one name as a copy of the other would leave
    none. A link back to a folder above it, an unreadable
    folder, a broken link and an image name that is not a regular file (a FIFO, a device) are failures.
    Files and folders the selection or root/.siamsearchignore leave out are not looked at: never failures.

    Raises:
        NotFoundError: root does not exist or is not a folder. UsageError: a malformed pattern.
    """
    root = Path(root)
    if root.is_file():
        return Scan([root] if is_image_path(root) else [])
    if not root.is_dir():
        raise NotFoundError(f"no such folder: {root}")
    real, rules = os.path.realpath(root), _Rules(root, selection)
    scan, folders, seen = Scan(), [(root, (real,))], {real}
    _met(root, scan)
    while folders:
        _scan_folder(*folders.pop(), scan, folders, seen, rules)
    scan.images.sort()
    return scan


Walk = tuple[Path, tuple[str, ...]]  # a folder to list, and the real paths of the folders it was reached through


def _scan_folder(folder: Path, chain: tuple[str, ...], scan: Scan, folders: list[Walk], seen: set[str],
                 rules: _Rules) -> None:
    """List one folder into scan and queue its subfolders, real ones first: a file reached twice keeps its real path."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
    except OSError as exc:
        scan.failures.append(Failure(folder, f"folder cannot be read ({exc.strerror or exc})"))
        scan.unread.append(folder)
        return
    subfolders: list[Walk] = []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if _is_folder(entry):
            subfolders += _new_folder(path, chain, seen, scan) if rules.keeps_folder(path) else []
        elif (entry.is_symlink() or is_image_path(path)) and rules.keeps_file(path):
            _check_file(path, scan)
    folders.extend(reversed(subfolders))  # popped in name order


def _is_folder(entry: os.DirEntry) -> bool:
    """True for a folder or a link to one; a link that cannot be followed is left to _check_file."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _new_folder(path: Path, chain: tuple[str, ...], seen: set[str], scan: Scan) -> list[Walk]:
    """[path to walk] unless its real path was reached before; a link to a folder it was reached through is a loop."""
    real = os.path.realpath(path)
    if real in chain:
        scan.failures.append(Failure(path, "symbolic link loop (it leads to a folder above it)"))
    if real in seen or _met(path, scan):
        return []
    seen.add(real)
    return [(path, (*chain, real))]


def _met(path: Path, scan: Scan) -> bool:
    """True when the file or folder at path was met before under another name (the same device and inode)."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in scan.listed:
        return True
    scan.listed.add(key)
    return False


def _check_file(path: Path, scan: Scan) -> None:
    """Keep a regular image file; count a broken link, a link loop or a FIFO, device or socket as a failure."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        scan.failures.append(Failure(path, _stat_reason(path, exc)))
        if exc.errno != errno.ELOOP:  # a loop hides nothing; anything else may hide files
            scan.unread.append(path)
        return
    if not is_image_path(path):
        return
    if stat.S_ISREG(mode):
        if not _met(path, scan):
            scan.images.append(path)
    else:
        scan.failures.append(Failure(path, "not a regular file"))


def _stat_reason(path: Path, exc: OSError) -> str:
    """Why a file cannot be looked at, in the words a scan and a decode both use."""
    if path.is_symlink() and exc.errno in (errno.ENOENT, errno.ELOOP):
        return "broken symbolic link" if exc.errno == errno.ENOENT else "symbolic link loop"
    known = {errno.ENOENT: "file not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
    return known.get(exc.errno, f"cannot be read ({exc.strerror or exc})")


def _check_regular(path: Path) -> None:
    """Raise BadImageError unless path is a regular file: opening a FIFO would wait for a writer forever."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise BadImageError(path, _stat_reason(path, exc)) from None
    if stat.S_ISDIR(mode):
        raise BadImageError(path, "is a directory")
    if not stat.S_ISREG(mode):
        raise BadImageError(path, "not a regular file")


def identity_of(path: Path, root: Path) -> str | None:
    """The identity of an image: its parent folder relative to root, or None when it sits at root."""
    rel = Path(path).parent.relative_to(root)
    return None if rel == Path(".") else rel.as_posix()


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, F...) to 'L' or 'RGB'."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


class _GuardOff:
    """Pillow's own decompression-bomb guard (89.5 MP by default) off while any thread decodes, back on when the
    last one is done: MAX_PIXELS is checked instead, with the size. Counted under a lock, because the guard is one
    global and threads (the review page's thumbnails) decode at once: saving and restoring it in each would
    interleave and could leave it off for everyone."""

    def __init__(self) -> None:
        self.lock, self.users, self.saved = threading.Lock(), 0, Image.MAX_IMAGE_PIXELS

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                self.saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self.users += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                Image.MAX_IMAGE_PIXELS = self.saved


_guard_off = _GuardOff()


def _reduced(img: Image.Image, side: int) -> Image.Image:
    """img shrunk by a whole factor to no less than side on its shorter edge, as JPEG draft mode decodes.

    Pillow cannot reduce palette, bilevel and 16-bit images: those stay whole (memory permitting).
    """
    factor = min(img.size) // side if side else 1
    reducible = img.mode not in ("1", "P") and not img.mode.startswith("I;")
    return img.reduce(factor) if factor > 1 and reducible else img


def file_sha256(path: Path) -> str | None:
    """Hex SHA-256 of a file's content, or None when it cannot be read (an unknown hash verifies nothing)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def frame_count(path: Path) -> int | None:
    """Frames or pages a file holds (an animated GIF, a multi-page TIFF), read from its headers: an image of many
    is embedded by its first alone, so it is a duplicate only of its own bytes. None when it cannot be read now."""
    _register_plugins()
    try:
        with _guard_off, Image.open(path) as img:  # headers only: no bomb guard to warn
            return int(getattr(img, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def load_image(path: Path | str, channels: int = 3, draft_size: int | None = None) -> Image.Image:
    """Decode one image: EXIF orientation applied, converted to L (channels=1) or RGB (channels=3).

    The upright size of the file itself, before any reduced decoding, is in `img.info[ORIGINAL_SIZE]`.

    draft_size is the side the image will be shrunk to: the JPEG decoder may return it reduced, to no
    less than REDUCING_GAP times that side, which is several times faster for photos far larger than the
    network input. Reducing further (to the side itself) would skip the antialiasing filter: textures
    would come out sharper than from the same picture stored as PNG, and embed differently.

    Raises:
        BadImageError: the file is missing, empty, truncated, not an image, unreadable or too large.
    """
    path = Path(path)
    _check_regular(path)
    _register_plugins()  # a spawned decode worker has not scanned
    try:
        with _guard_off:  # MAX_PIXELS is checked here, with the size (no warnings filter: that too is one global)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(path, f"too large ({img.width}x{img.height} pixels; the limit is "
                                              f"{MAX_PIXELS / 1e6:g} MP)")
                stored = img.size  # before any reduced decoding: what "largest" and the rows compare
                side = math.ceil(REDUCING_GAP * draft_size) if draft_size else 0
                if side and img.format == "JPEG":
                    img.draft("RGB" if channels == 3 else "L", (side, side))
                img.load()
                img = _reduced(img, side) if img.width * img.height > FULL_DECODE_PIXELS else img
                turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn swaps the sides
                img = _to_mode(ImageOps.exif_transpose(img), channels)
                img.info[ORIGINAL_SIZE] = stored[::-1] if turned else stored
                return img
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except PermissionError:
        raise BadImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise BadImageError(path, "is a directory") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(path, "too large (decompression bomb guard)") from None
    except Image.UnidentifiedImageError:
        reason = "empty file" if path.stat().st_size == 0 else "not an image"
        raise BadImageError(path, reason) from None
    except (OSError, SyntaxError, ValueError) as exc:
        truncated = "truncated" in str(exc).lower()  # Pillow words it several ways, by format
        raise BadImageError(path, "truncated file" if truncated else f"cannot decode ({exc})") from None
