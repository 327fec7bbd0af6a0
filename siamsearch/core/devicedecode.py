"""JPEGs decoded in batches on the embedding device (nvJPEG on a GPU) and cut to eval views there.

Decode workers only read a JPEG's header and bytes; the device decodes a whole batch at once and
resizes it, which feeds a GPU several times faster than PIL in the workers can. Anything else (PNG,
CMYK JPEGs, huge JPEGs that PIL decodes reduced) and any file the device decoder refuses goes to PIL,
one file at a time, so a bad file is still skipped and counted and never fails its batch. On a CPU
the same code runs with torchvision's CPU decoder: that is how the tests check it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from .images import ORIENTATION

DEVICE_DECODE_PIXELS = 50_000_000  # larger JPEGs go to PIL, whose draft mode decodes them reduced
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Jpeg:
    """A JPEG file's bytes, left for the device to decode, with what its header says."""

    data: torch.Tensor  # (n,) uint8, the whole file
    size: tuple[int, int]  # (width, height) upright, as images.ORIGINAL_SIZE
    orientation: int  # EXIF orientation, 1 (upright) to 8


def read_jpeg(path: Path, channels: int) -> Jpeg | None:
    """The bytes of a plain RGB or grayscale JPEG; None for anything else, which PIL then decodes (and judges)."""
    if not path.is_file():  # a FIFO would block; PIL's path names what it is
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning: PIL's path refuses it by name
            with Image.open(path) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > DEVICE_DECODE_PIXELS:
                    return None
                orientation, (w, h) = img.getexif().get(ORIENTATION, 1), img.size
        data = path.read_bytes()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    size = (h, w) if orientation in QUARTER_TURNS else (w, h)
    return Jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), size, orientation if 1 <= orientation <= 8 else 1)


def upright(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored → as meant to be seen: what PIL's ImageOps.exif_transpose does, on the device."""
    turned = {1: img, 2: img.flip(-1), 3: img.flip(-1, -2), 4: img.flip(-2), 5: img.transpose(-2, -1),
              6: img.rot90(-1, (-2, -1)), 7: img.transpose(-2, -1).flip(-1, -2), 8: img.rot90(1, (-2, -1))}
    return turned.get(orientation, img)


def square_views(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, C, size, size) uint8: centred squares resized with antialiasing, as square_view.

    Like PIL, the width first, rounded to 8 bits, then the height: in one pass the views differ from PIL's
    by 0.12 gray levels on average, enough to move an ImageNet network's vectors by 0.02; in two, by 0.006.
    """
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = images[:, :, top:top + side, left:left + side].float()
    for shape in ((side, size), (size, size)):
        x = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False).round_().clamp_(0, 255)
    return x.to(torch.uint8)


def _decode(data: list[torch.Tensor], mode: ImageReadMode, device: torch.device) -> list[torch.Tensor | None]:
    """Decode a batch at once; when the decoder refuses it, file by file, None for each refused file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec; same decoder
        try:
            return list(decode_jpeg(data, mode=mode, device=device))
        except RuntimeError:
            if len(data) == 1:
                return [None]
            return [img for one in data for img in _decode([one], mode, device)]


def decode_views(jpegs: list[Jpeg], size: int, channels: int,
                 device: torch.device) -> list[torch.Tensor | None]:
    """JPEGs → (C, size, size) uint8 eval views on `device`, decoded in one batch; None where the decoder refused.

    Pictures of one shape (a camera's, a scanner's) are cut and resized together: a few kernels per shape,
    not per picture, keep the launches off the critical path at thousands of pictures a second.
    """
    if not jpegs:
        return []
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    decoded = _decode([j.data for j in jpegs], mode, device)
    shapes: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for k, (img, jpeg) in enumerate(zip(decoded, jpegs)):
        if img is not None:
            turned = upright(img, jpeg.orientation)
            shapes.setdefault(tuple(turned.shape), []).append((k, turned))
    views: list[torch.Tensor | None] = [None] * len(jpegs)
    for same in shapes.values():
        for (k, _), view in zip(same, square_views(torch.stack([img for _, img in same]), size)):
            views[k] = view
    return views
