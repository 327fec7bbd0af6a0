"""Batched decoding and embedding of many images: the one torch → numpy boundary.

Bad files never raise here: they come back as a list of Failure(path, reason).

On a GPU nothing waits on the host per batch: workers stack each batch and the DataLoader pins it,
the copy to the device is asynchronous, JPEGs are decoded on the device (siamsearch.core.devicedecode),
and embeddings stay there until a chunk of batches is done, then come back in one copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from .config import Preprocess, Runtime
from .decoding import Batch, DecodedImages, FileFacts, Progress, loader
from .device import autocast, default_workers
from .devicedecode import decode_views
from .errors import UsageError
from .images import ORIGINAL_SIZE, BadImageError, Failure, load_image
from .transforms import normalize, square_view

DECODES = ("auto", "pil", "device")  # auto: JPEGs on the device when it is a GPU, PIL in the workers otherwise
CHUNK_BATCHES = 16  # on a GPU, batches whose embeddings stay there before one copy back to the host


@dataclass
class EmbedResult:
    """Embeddings of the readable images, in input order, and the files that were skipped."""

    paths: list[Path] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, D), unit rows
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height)
    failures: list[Failure] = field(default_factory=list)
    facts: list[FileFacts | None] = field(default_factory=list)  # with facts=True: hash and frames, one per path
    waited: float = 0.0  # seconds the stream waited for its decoded batches
    encoded: float = 0.0  # seconds it spent on them: views, encoder, the copy back


def what_limits(waited: float, encoded: float) -> str:
    """What limits a stream that waited `waited` seconds for decoded batches and spent `encoded` on them: "decode"
    or "encoder". On a CPU the polite workers decode on every core while the encoder waits, so the two times
    are the two jobs' shares of the cores; on a GPU the stream waits only when decoding cannot keep up."""
    return "decode" if waited > encoded else "encoder"


Pending = tuple[list[int], torch.Tensor, list[tuple[int, int]], list[Failure], list[FileFacts | None]]


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
def embed_batches(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = Runtime.batch_size,
                  workers: int | None = None, device: torch.device | str = "cpu", amp: bool | None = None,
                  decode: str = "auto", compile: bool = False, chunk: int | None = None,
                  facts: bool = False) -> Iterator[EmbedResult]:
    """Embed many image files as one stream: one DataLoader and worker pool for all, a chunk of batches at a time.

    A caller that stores results as they come (siamsearch.index.indexing) keeps its work if stopped midway.
    decode: one of DECODES; "device" decodes JPEGs on `device` even when it is the CPU.
    chunk: batches whose embeddings stay on the device before one copy back (default CHUNK_BATCHES on
    a GPU, 1 on a CPU, where there is no copy to save). facts: the workers also hash each file they decode and
    count its frames (EmbedResult.facts), so that a caller storing rows reads no file itself.

    Yields:
        One EmbedResult per chunk, in input order: vectors (B, D) float32, rows L2-normalised.
    """
    if decode not in DECODES:
        raise UsageError(f"unknown decode {decode!r}; one of {', '.join(DECODES)}")
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    net = prepared(model, device, compile)
    workers = default_workers(device) if workers is None else workers
    chunk = chunk or (CHUNK_BATCHES if on_gpu else 1)
    on_device = pre.framing == "centre" and (decode == "device" or decode == "auto" and on_gpu)  # devicedecode centres
    images = DecodedImages(paths, [pre.image_size], pre.channels, jpeg=on_device, framing=pre.framing, facts=facts)
    pending: list[Pending] = []
    waited = encoded = 0.0
    polite = device.type == "cpu"  # the workers share the encoder's cores: they decode while it waits (loader)
    parts = max(1, workers) if polite else 1  # a batch in one piece per worker, so that every core decodes it
    batches = loader(images, workers, pin=on_gpu, batch_size=max(1, batch_size // parts), polite=polite)
    mark = time.perf_counter()
    while group := list(islice(batches, parts)):
        waited, mark = waited + time.perf_counter() - mark, time.perf_counter()
        got = [_views(batch, paths, pre.image_size, pre.channels, device) for batch in group]
        idx, views, sizes, failures = ([x for g in got for x in g[k]] for k in range(4))
        vectors = forward(net, torch.stack(views), pre, device, amp) if idx else torch.zeros(0, _dim(model), device=device)
        known = {i: f for batch in group for i, f in batch.facts.items()}
        pending.append((idx, vectors, sizes, failures, [known.get(i) for i in idx] if facts else []))
        if len(pending) == chunk:
            done = _to_host(pending, paths)
            done.waited, done.encoded = waited, encoded + time.perf_counter() - mark
            yield done
            pending, waited, encoded, mark = [], 0.0, 0.0, time.perf_counter()  # the caller's time is neither
        else:
            encoded, mark = encoded + time.perf_counter() - mark, time.perf_counter()
    if pending:
        done = _to_host(pending, paths)
        done.waited, done.encoded = waited, encoded + time.perf_counter() - mark
        yield done


def _to_host(pending: list[Pending], paths: Sequence[Path]) -> EmbedResult:
    """A chunk of batches as one EmbedResult: its vectors come to the host in one copy, the one wait for the device."""
    parts = [vectors for _, vectors, *_ in pending if len(vectors)] or [pending[0][1]]
    vectors = torch.cat(parts).cpu().numpy()
    return EmbedResult([Path(paths[i]) for idx, *_ in pending for i in idx], vectors,
                       [wh for _, _, sizes, *_ in pending for wh in sizes], [f for *_, bad, _ in pending for f in bad],
                       [f for *_, facts in pending for f in facts])


def embed_paths(model: torch.nn.Module, pre: Preprocess, paths: Sequence[Path], *, batch_size: int = Runtime.batch_size,
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
