"""Images decoded to uint8 views in worker processes: what embedding and training both read images through.

A worker decodes each file (siamsearch.core.images.load_image) to square views at one or more sizes, framed as
the encoder frames its input, or only reads a plain JPEG for the device to decode (devicedecode); it stacks the
batch itself, so one tensor crosses to the main process and the DataLoader pins one tensor. A bad file comes back
as its reason, never an exception; a worker that cannot hand a batch over ends the run in one line. Asked to
(facts=True), it also hashes each file it decodes and counts its frames, so that the main process, which runs
the encoder, never reads a file (siamsearch.index.indexing stores both in the file's row).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .devicedecode import Jpeg, read_jpeg
from .errors import UsageError
from .images import ORIGINAL_SIZE, BadImageError, Failure, file_sha256, frame_count, load_image
from .transforms import square_view

Progress = Callable[[int, int], None]  # (done, total): files finished so far, of all there are to do
SHARED_MEMORY_FULL = ("</torch_", "shared memory")  # torch's words when a worker cannot hand a batch over
POLITE_NICENESS = 19  # a polite worker's nice: a core busy with the encoder gives it ~1.5% (CFS weight 15 of 1024)


class FileFacts(NamedTuple):
    """What a row records of a file's content besides its vector, read in the worker that decodes it."""

    sha256: str | None  # hex SHA-256 of the bytes; None when they could not be read
    frames: int | None  # frames or pages (images.frame_count); None when the headers could not be read


class Decoded(NamedTuple):
    """One file as a worker leaves it: eval views, a JPEG for the device, or the reason it is unusable."""

    index: int
    views: tuple[torch.Tensor, ...] | None  # (C, s, s) uint8 per size
    size: tuple[int, int]  # original (width, height), upright
    reason: str  # why the file is skipped; "" when it is not
    jpeg: Jpeg | None = None  # bytes for the device to decode instead of views
    facts: FileFacts | None = None  # with facts=True, of every usable file


class DecodedImages(Dataset):
    """Decodes image i to square uint8 views at one or more sizes; a bad file yields its reason.

    With jpeg=True (one size only, centre framing), a plain JPEG is only read: the device decodes it (devicedecode).
    framing: how a picture becomes a square (transforms.square_view). facts: also hash each usable file and
    count its frames (FileFacts).
    """

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], channels: int, jpeg: bool = False,
                 framing: str = "centre", facts: bool = False) -> None:
        self.paths, self.sizes, self.channels, self.jpeg = list(paths), tuple(sizes), channels, jpeg
        self.framing, self.facts = framing, facts

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = Path(self.paths[i])
        jpeg = read_jpeg(path, self.channels) if self.jpeg else None
        if jpeg is not None:
            return Decoded(i, None, jpeg.size, "", jpeg, self._facts(path))
        try:
            img = load_image(path, self.channels, draft_size=max(self.sizes))
        except BadImageError as exc:
            return Decoded(i, None, (0, 0), exc.reason)
        views = tuple(square_view(img, s, self.framing) for s in self.sizes)
        return Decoded(i, views, img.info.get(ORIGINAL_SIZE, img.size), "", facts=self._facts(path))

    def _facts(self, path: Path) -> FileFacts | None:
        """The file's hash and frame count when asked for, read right after the file itself (from the page cache)."""
        return FileFacts(file_sha256(path), frame_count(path)) if self.facts else None


class JpegFile(NamedTuple):
    """A file of the batch left for the device to decode: its bytes are `length` bytes of the batch's blob."""

    index: int
    size: tuple[int, int]  # original (width, height), upright
    orientation: int
    length: int


@dataclass
class Batch:
    """A batch as the workers hand it over: views stacked and JPEG bytes joined, so one tensor each crosses
    from the worker and the DataLoader pins one tensor."""

    indices: list[int]  # files decoded to views, in order
    views: tuple[torch.Tensor, ...]  # (B, C, s, s) uint8 per size
    sizes: list[tuple[int, int]]  # their original (width, height)
    failures: list[tuple[int, str]]  # (index, reason)
    jpegs: list[JpegFile] = field(default_factory=list)  # files left for the device to decode
    blob: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))  # their bytes, in order
    facts: dict[int, FileFacts] = field(default_factory=dict)  # index → its facts, when the dataset reads them

    def pin_memory(self) -> Batch:
        """The batch with its views in page-locked memory: the DataLoader's pinning thread calls this."""
        return replace(self, views=tuple(v.pin_memory() for v in self.views))

    def jpeg_files(self) -> list[Jpeg]:
        """The JPEGs left for the device, each its bytes (a view of the blob) and header facts."""
        data = torch.split(self.blob, [f.length for f in self.jpegs])
        return [Jpeg(d, f.size, f.orientation) for d, f in zip(data, self.jpegs)]


def collate(items: list[Decoded], sizes: tuple[int, ...], channels: int) -> Batch:
    """Stack a batch's views and join its JPEGs' bytes in the worker; failures go apart."""
    good = [it for it in items if it.views is not None]
    views = tuple(handed_over(torch.stack([it.views[j] for it in good])) if good
                  else torch.empty(0, channels, s, s, dtype=torch.uint8) for j, s in enumerate(sizes))
    jpegs = [it for it in items if it.jpeg is not None]
    batch = Batch([it.index for it in good], views, [it.size for it in good],
                  [(it.index, it.reason) for it in items if it.reason],
                  facts={it.index: it.facts for it in items if it.facts is not None})
    if jpegs:
        batch.jpegs = [JpegFile(it.index, it.jpeg.size, it.jpeg.orientation, len(it.jpeg.data)) for it in jpegs]
        batch.blob = handed_over(torch.cat([it.jpeg.data for it in jpegs]))
    return batch


def handed_over(tensor: torch.Tensor) -> torch.Tensor:
    """In a worker, the tensor moved to shared memory now: a full /dev/shm then fails in the worker, which reports
    it, not in its queue's feeder thread, which only prints it while the main process waits for the batch forever."""
    return tensor.share_memory_() if get_worker_info() is not None else tensor


def loader(images: DecodedImages, workers: int, pin: bool, batch_size: int | None = None,
           batch_sampler: Sampler | None = None, polite: bool = False) -> Iterator[Batch]:
    """Batches of `images`, collated in the workers, pinned by the DataLoader for an asynchronous copy to a GPU.

    polite: the workers run at the lowest priority, for an encoder on the same cores: its threads run whenever it
    has a batch, and while it waits for the next, the workers decode on every core. Decode and encoder then take
    turns on all the cores, instead of a worker stalling the encoder's threads (which wait for each other) by
    taking one of their cores midway; a run comes near cores / (cores / forward + 1 / decode) images/s.

    Raises:
        UsageError: a worker could not hand a batch over (shared memory or the file-size limit ran out).
    """
    batches = DataLoader(images, batch_size=batch_size, batch_sampler=batch_sampler, num_workers=workers,
                         collate_fn=partial(collate, sizes=images.sizes, channels=images.channels), pin_memory=pin,
                         prefetch_factor=4 if workers else None,
                         worker_init_fn=_lowest_priority if polite and workers else None)
    try:
        yield from batches
    except RuntimeError as exc:
        if not any(words in str(exc) for words in SHARED_MEMORY_FULL):
            raise
        reason = str(exc).strip().splitlines()[-1]
        raise UsageError(f"decode workers could not hand a batch over ({reason}); use fewer --workers, or --workers 0, "
                         "or give /dev/shm more room (docker run --shm-size=1g)") from None


def _lowest_priority(worker_id: int) -> None:
    """A polite worker's start: the lowest priority (POLITE_NICENESS) where there are nice values (not on Windows)."""
    if hasattr(os, "nice"):
        os.nice(POLITE_NICENESS - os.nice(0))


def decode_images(paths: Sequence[Path], sizes: Sequence[int], channels: int, workers: int = 0,
                  progress: Progress | None = None,
                  framing: str = "centre") -> tuple[np.ndarray, tuple[torch.Tensor, ...], list[Failure]]:
    """Decode every image once into memory (training cache), framed as the encoder frames its input.

    Returns:
        (kept indices into paths, one uint8 (N, C, s, s) tensor per size, failures).
    """
    kept: list[int] = []
    chunks: list[tuple[torch.Tensor, ...]] = []
    failures: list[Failure] = []
    for batch in loader(DecodedImages(paths, sizes, channels, framing=framing), workers, pin=False, batch_size=256):
        kept.extend(batch.indices)
        failures.extend(Failure(Path(paths[i]), why) for i, why in batch.failures)
        chunks.append(batch.views)
        if progress:
            progress(len(kept) + len(failures), len(paths))
    empty = tuple(torch.empty(0, channels, s, s, dtype=torch.uint8) for s in sizes)
    tensors = tuple(torch.cat([c[j] for c in chunks]) if chunks else empty[j] for j in range(len(sizes)))
    return np.array(kept, dtype=np.int64), tensors, failures
