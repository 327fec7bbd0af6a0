"""Finding images in folders and decoding one image safely; what a "bad file" is."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import NotFoundError, SiamsearchError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

# Decompression-bomb guard: refuse anything above this many pixels (about 16k x 16k).
MAX_PIXELS = 250_000_000
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


def is_image_path(path: Path) -> bool:
    """True for a visible file with an image extension (content is checked only on decode)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(root: Path | str) -> list[Path]:
    """All image files under root, recursively, sorted; hidden files and folders are skipped.

    Raises:
        FileNotFoundError: root does not exist or is not a folder.
    """
    root = Path(root)
    if root.is_file():
        return [root] if is_image_path(root) else []
    if not root.is_dir():
        raise NotFoundError(f"no such folder: {root}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / name for name in filenames if is_image_path(Path(name)))
    return sorted(found)


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


def load_image(path: Path | str, channels: int = 3, draft_size: int | None = None) -> Image.Image:
    """Decode one image: EXIF orientation applied, converted to L (channels=1) or RGB (channels=3).

    draft_size is the side the image will be shrunk to: the JPEG decoder may return it reduced, to no
    less than REDUCING_GAP times that side, which is several times faster for photos far larger than the
    network input. Reducing further (to the side itself) would skip the antialiasing filter: textures
    would come out sharper than from the same picture stored as PNG, and embed differently.

    Raises:
        BadImageError: the file is missing, empty, truncated, not an image, unreadable or too large.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(path, f"too large ({img.width}x{img.height} pixels)")
                if draft_size and img.format == "JPEG":
                    side = math.ceil(REDUCING_GAP * draft_size)
                    img.draft("RGB" if channels == 3 else "L", (side, side))
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_mode(img, channels)
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
        raise BadImageError(path, f"cannot decode ({exc})") from None
