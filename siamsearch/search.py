"""Encoder + store together: index a folder with a model, and query an index with images.

This is the notebook API:

    >>> from siamsearch import Searcher, index_folder
    >>> store, report = index_folder("~/photos", "indexes/photos", "model.pt")
    >>> hits, failures = Searcher.open("indexes/photos").query_images(["query.jpg"], k=5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, load_encoder
from .config import to_dict
from .device import resolve_device
from .embed import EmbedResult, embed_paths
from .errors import NotFoundError
from .images import Failure, find_images
from .model import Encoder
from .store import MANIFEST, Progress, Store, StoreError, SyncReport


@dataclass(frozen=True)
class Neighbor:
    """One search hit; `distance` is Euclidean between unit vectors (0 = same, 2 = opposite)."""

    rank: int
    path: str
    distance: float
    identity: str | None
    id: int


@dataclass
class QueryResult:
    """The neighbours of one query image, nearest first."""

    query: Path
    neighbors: list[Neighbor] = field(default_factory=list)


@dataclass(frozen=True)
class EmbedOptions:
    """How to run the encoder over many files."""

    batch_size: int = 64
    workers: int | None = None  # None: all cores but one
    device: str = "auto"
    amp: bool | None = None  # None: mixed precision on CUDA only


def _embed_fn(model: Encoder, ckpt: Checkpoint, opts: EmbedOptions,
              progress: Callable[[int], None] | None = None) -> Callable[[Sequence[Path]], EmbedResult]:
    """The store's embedding function: paths → EmbedResult with this encoder."""
    return partial(embed_paths, model, ckpt.preprocess, batch_size=opts.batch_size, workers=opts.workers,
                   device=resolve_device(opts.device), amp=opts.amp, progress=progress)


def _model_of(store: Store, model_path: Path | str | None) -> Path:
    """The model to use with an index: the one given, else the one recorded in its manifest."""
    if model_path is not None:
        return Path(model_path)
    recorded = store.info().get("model")
    if not recorded:
        raise CheckpointError(f"{store.path} records no model file; pass --model")
    return Path(recorded)


def index_folder(image_dir: Path | str, index_dir: Path | str, model_path: Path | str | None = None, *,
                 kind: str = "auto", rebuild: bool = False, opts: EmbedOptions = EmbedOptions(),
                 commit_every: int = 2048, progress: Progress | None = None) -> tuple[Store, SyncReport]:
    """Create or update the index of a folder, embedding only new and changed files.

    Raises:
        CheckpointError: no usable model. ModelMismatchError: the index was built by another model.
        StoreError: the index directory is unusable or another process is writing to it.
    """
    image_dir, index_dir = Path(image_dir).expanduser().resolve(), Path(index_dir).expanduser()
    if not image_dir.is_dir():
        raise NotFoundError(f"no such folder: {image_dir}")
    exists = (index_dir / MANIFEST).exists()
    store = Store.open(index_dir) if exists else None
    if store is not None and not rebuild and store.root != image_dir:
        raise StoreError(f"{index_dir} indexes {store.root}, not {image_dir}; pass another --index or --rebuild")
    model_file = _model_of(store, model_path) if store is not None else model_path
    if model_file is None:
        raise CheckpointError("a new index needs a model: pass --model MODEL.pt")
    model, ckpt = load_encoder(Path(model_file))
    if store is None or rebuild:
        if store is not None:
            store.close()
        store = Store.create(index_dir, dim=ckpt.encoder.dim, fingerprint=ckpt.fingerprint,
                             encoder=to_dict(ckpt.encoder), model_path=str(Path(model_file).resolve()),
                             root=image_dir, index_kind=kind, overwrite=exists)
    store.check_model(ckpt.fingerprint)
    counter = _Counter(progress)
    report = store.sync(image_dir, _embed_fn(model, ckpt, opts, counter.images), rebuild=rebuild,
                        commit_every=commit_every, progress=counter.chunk)
    return store, report


class _Counter:
    """Merges the store's per-chunk (done, total) with per-batch image counts into one smooth stream."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.done, self.total = progress, 0, 0

    def chunk(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.images(0)

    def images(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if self.progress:
            self.progress(self.done, self.total)


class Searcher:
    """An index with the encoder that built it, to search by image."""

    def __init__(self, store: Store, model: Encoder, ckpt: Checkpoint, opts: EmbedOptions = EmbedOptions()) -> None:
        store.check_model(ckpt.fingerprint)
        self.store, self.model, self.ckpt, self.opts = store, model, ckpt, opts

    @classmethod
    def open(cls, index_dir: Path | str, model_path: Path | str | None = None,
             opts: EmbedOptions = EmbedOptions()) -> Searcher:
        """Open an index and load its model (from the manifest unless one is given)."""
        store = Store.open(Path(index_dir).expanduser())
        model, ckpt = load_encoder(_model_of(store, model_path), resolve_device(opts.device))
        return cls(store, model, ckpt, opts)

    def query_vectors(self, vectors: np.ndarray, k: int = 10, max_distance: float | None = None,
                      exclude: Sequence[Path | None] | None = None) -> list[list[Neighbor]]:
        """Neighbours of (Q, D) unit vectors; `exclude[i]` drops that file from query i's results."""
        exclude = exclude or [None] * len(vectors)
        extra = 1 if any(e is not None for e in exclude) else 0
        distances, ids = self.store.search(vectors, k + extra)
        out = []
        for q, (dist, idx) in enumerate(zip(distances, ids)):
            keep = [(d, i) for d, i in zip(dist, idx) if i >= 0 and (max_distance is None or d <= max_distance)]
            rows = self.store.rows([i for _, i in keep])
            hits = [(d, r) for (d, _), r in zip(keep, rows) if exclude[q] is None or r.abspath != exclude[q]][:k]
            out.append([Neighbor(rank, r.path, float(d), r.identity, r.id)
                        for rank, (d, r) in enumerate(hits, start=1)])
        return out

    def query_images(self, paths: Sequence[Path | str], k: int = 10, max_distance: float | None = None,
                     exclude_self: bool = False) -> tuple[list[QueryResult], list[Failure]]:
        """Embed query images (folders expand to their images) and find their neighbours."""
        files = [f for p in paths for f in (find_images(p) if Path(p).is_dir() else [Path(p)])]
        result = _embed_fn(self.model, self.ckpt, self.opts)(files)
        queries = [p.resolve() for p in result.paths]
        hits = self.query_vectors(result.vectors, k, max_distance, queries if exclude_self else None)
        return [QueryResult(p, h) for p, h in zip(result.paths, hits)], result.failures
