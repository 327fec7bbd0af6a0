"""Batched decoding and embedding of many images: the one torch → numpy boundary.

Bad files never raise here: they come back as a list of Failure(path, reason).

On a GPU nothing waits on the host per batch: workers stack each batch and the DataLoader pins it,
the copy to the device is asynchronous, JPEGs are decoded on the device (siamsearch.core.devicedecode),
and embeddings stay there until a chunk of batches is done, then come back in one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .config import Preprocess
from .device import autocast, default_workers
from .devicedecode import Jpeg, decode_views, read_jpeg
from .errors import UsageError
from .images import ORIGINAL_SIZE, BadImageError, Failure, load_image
from .transforms import normalize, square_view

Progress = Callable[[int, int], None]  # (done, total): files finished so far, of all there are to do
DECODES = ("auto", "pil", "device")  # auto: JPEGs on the device when it is a GPU, PIL in the workers otherwise
CHUNK_BATCHES = 16  # on a GPU, batches whose embeddings stay there before one copy back to the host
SHARED_MEMORY_FULL = ("</torch_", "shared memory")  # torch's words when a worker cannot hand a batch over


class Decoded(NamedTuple):
    """One file as a worker leaves it: eval views, a JPEG for the device, or the reason it is unusable."""

    index: int
    views: tuple[torch.Tensor, ...] | None  # (C, s, s) uint8 per size
    size: tuple[int, int]  # original (width, height), upright
    reason: str  # why the file is skipped; "" when it is not
    jpeg: Jpeg | None = None  # bytes for the device to decode instead of views


class DecodedImages(Dataset):
    """Decodes image i to square uint8 views at one or more sizes; a bad file yields its reason.

    With jpeg=True (one size only, centre framing), a plain JPEG is only read: the device decodes it (devicedecode).
    framing: how a picture becomes a square (transforms.square_view).
    """

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], channels: int, jpeg: bool = False,
                 framing: str = "centre") -> None:
        self.paths, self.sizes, self.channels, self.jpeg = list(paths), tuple(sizes), channels, jpeg
        self.framing = framing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        jpeg = read_jpeg(Path(self.paths[i]), self.channels) if self.jpeg else None
        if jpeg is not None:
            return Decoded(i, None, jpeg.size, "", jpeg)
        try:
            img = load_image(self.paths[i], self.channels, draft_size=max(self.sizes))
        except BadImageError as exc:
            return Decoded(i, None, (0, 0), exc.reason)
        views = tuple(square_view(img, s, self.framing) for s in self.sizes)
        return Decoded(i, views, img.info.get(ORIGINAL_SIZE, img.size), "")


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
                  [(it.index, it.reason) for it in items if it.reason])
    if jpegs:
        batch.jpegs = [JpegFile(it.index, it.jpeg.size, it.jpeg.orientation, len(it.jpeg.data)) for it in jpegs]
        batch.blob = handed_over(torch.cat([it.jpeg.data for it in jpegs]))
    return batch


def handed_over(tensor: torch.Tensor) -> torch.Tensor:
    """In a worker, the tensor moved to shared memory now: a full /dev/shm then fails in the worker, which reports
    it, not in its queue's feeder thread, which only prints it while the main process waits for the batch forever."""
    return tensor.share_memory_() if get_worker_info() is not None else tensor


def loader(images: DecodedImages, workers: int, pin: bool, batch_size: int | None = None,
           batch_sampler: Sampler | None = None) -> Iterator[Batch]:
    """Batches of `images`, collated in the workers, pinned by the DataLoader for an asynchronous copy to a GPU.

    Raises:
        UsageError: a worker could not hand a batch over (shared memory or the file-size limit ran out).
    """
    batches = DataLoader(images, batch_size=batch_size, batch_sampler=batch_sampler, num_workers=workers,
                         collate_fn=partial(collate, sizes=images.sizes, channels=images.channels), pin_memory=pin,
                         prefetch_factor=4 if workers else None)
    try:
        yield from batches
    except RuntimeError as exc:
        if not any(words in str(exc) for words in SHARED_MEMORY_FULL):
            raise
        reason = str(exc).strip().splitlines()[-1]
        raise UsageError(f"decode workers could not hand a batch over ({reason}); use fewer --workers, or --workers 0, "
                         "or give /dev/shm more room (docker run --shm-size=1g)") from None


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


@dataclass
class EmbedResult:
    """Embeddings of the readable images, in input order, and the files that were skipped."""

    paths: list[Path] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, D), unit rows
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height)
    failures: list[Failure] = field(default_factory=list)


def forward(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, pre: Preprocess, device: torch.device,
            amp: bool | None = None) -> torch.Tensor:
    """uint8 or [0, 1] (B, C, S, S) images → (B, D) float32 unit vectors, left on the device (no sync)."""
    x = normalize(batch.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        return model(x).float()


@torch.inference_mode()
def embed_tensors(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, pre: Preprocess,
                  device: torch.device, amp: bool | None = None) -> np.ndarray:
    """uint8 or [0, 1] (B, C, S, S) images → (B, D) float32 unit vectors on the host."""
    return forward(model, batch, pre, device, amp).cpu().numpy()


def _dim(model: torch.nn.Module) -> int:
    """Embedding size, so that no readable file still gives a (0, D) array."""
    return model.cfg.embedding_dim if hasattr(model, "cfg") else 0


def _views(batch: Batch, paths: Sequence[Path], size: int, channels: int,
           device: torch.device) -> tuple[list[int], list[torch.Tensor], list[tuple[int, int]], list[Failure]]:
    """Every readable file of a batch as a (C, S, S) view on the device, in input order.

    JPEGs are decoded on the device in one call; one it refuses is decoded by PIL here, or counted as a failure.
    """
    views = batch.views[0].to(device, non_blocking=True)
    found = {i: (views[k], wh) for k, (i, wh) in enumerate(zip(batch.indices, batch.sizes))}
    failures = [Failure(Path(paths[i]), why) for i, why in batch.failures]
    for item, view in zip(batch.jpegs, decode_views(batch.jpeg_files(), size, channels, device)):
        if view is not None:
            found[item.index] = (view, item.size)
            continue
        try:
            img = load_image(paths[item.index], channels, draft_size=size)
        except BadImageError as exc:
            failures.append(Failure(Path(paths[item.index]), exc.reason))
            continue
        found[item.index] = (square_view(img, size).to(device), img.info.get(ORIGINAL_SIZE, img.size))
    order = sorted(found)
    return order, [found[i][0] for i in order], [found[i][1] for i in order], failures


def prepared(model: torch.nn.Module, device: torch.device, compile: bool = False) -> torch.nn.Module:
    """The model on `device` in eval mode and channels_last; compiled with torch.compile when asked."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    return torch.compile(model, dynamic=False) if compile else model


@torch.inference_mode()
def embed_batches(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = 64,
                  workers: int | None = None, device: torch.device | str = "cpu", amp: bool | None = None,
                  decode: str = "auto", compile: bool = False, chunk: int | None = None) -> Iterator[EmbedResult]:
    """Embed many image files as one stream: one DataLoader and worker pool for all, a chunk of batches at a time.

    A caller that stores results as they come (siamsearch.index.indexing) keeps its work if stopped midway.
    decode: one of DECODES; "device" decodes JPEGs on `device` even when it is the CPU.
    chunk: batches whose embeddings stay on the device before one copy back (default CHUNK_BATCHES on
    a GPU, 1 on a CPU, where there is no copy to save).

    Yields:
        One EmbedResult per chunk, in input order: vectors (B, D) float32, rows L2-normalised.
    """
    if decode not in DECODES:
        raise UsageError(f"unknown decode {decode!r}; one of {', '.join(DECODES)}")
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    net = prepared(model, device, compile)
    workers = default_workers() if workers is None else workers
    chunk = chunk or (CHUNK_BATCHES if on_gpu else 1)
    on_device = pre.framing == "centre" and (decode == "device" or decode == "auto" and on_gpu)  # devicedecode centres
    images = DecodedImages(paths, [pre.image_size], pre.channels, jpeg=on_device, framing=pre.framing)
    pending: list[tuple[list[int], torch.Tensor, list[tuple[int, int]], list[Failure]]] = []
    for batch in loader(images, workers, pin=on_gpu, batch_size=batch_size):
        idx, views, sizes, failures = _views(batch, paths, pre.image_size, pre.channels, device)
        vectors = forward(net, torch.stack(views), pre, device, amp) if idx else torch.zeros(0, _dim(model), device=device)
        pending.append((idx, vectors, sizes, failures))
        if len(pending) == chunk:
            yield _to_host(pending, paths)
            pending = []
    if pending:
        yield _to_host(pending, paths)


def _to_host(pending: list[tuple[list[int], torch.Tensor, list[tuple[int, int]], list[Failure]]],
             paths: Sequence[Path]) -> EmbedResult:
    """A chunk of batches as one EmbedResult: its vectors come to the host in one copy, the one wait for the device."""
    parts = [vectors for _, vectors, _, _ in pending if len(vectors)] or [pending[0][1]]
    vectors = torch.cat(parts).cpu().numpy()
    return EmbedResult([Path(paths[i]) for idx, *_ in pending for i in idx], vectors,
                       [wh for _, _, sizes, _ in pending for wh in sizes], [f for *_, bad in pending for f in bad])


def embed_paths(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = 64,
                workers: int | None = None, device: torch.device | str = "cpu", amp: bool | None = None,
                decode: str = "auto", compile: bool = False, progress: Progress | None = None) -> EmbedResult:
    """Embed many image files in batches with worker processes decoding ahead of the model.

    Returns:
        EmbedResult with vectors (N, D) float32, rows L2-normalised, for the readable files.
    """
    out, vecs = EmbedResult(), [np.zeros((0, _dim(model)), np.float32)]
    for part in embed_batches(model, pre, paths, batch_size=batch_size, workers=workers, device=device, amp=amp,
                              decode=decode, compile=compile):
        out.paths.extend(part.paths)
        out.sizes.extend(part.sizes)
        out.failures.extend(part.failures)
        vecs.append(part.vectors)
        if progress:
            progress(len(out.paths) + len(out.failures), len(paths))
    out.vectors = np.concatenate(vecs)
    return out
