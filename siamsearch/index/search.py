"""Nearest neighbours of query images in an index, with the encoder that built it.

This is the notebook API (siamsearch.index.indexing builds the index):

    >>> from siamsearch import Searcher, index_folder
    >>> store, report = index_folder("~/photos", "indexes/photos", "model.pt")
    >>> hits, failures = Searcher.open("indexes/photos").query_images(["query.jpg"], k=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.checkpoint import Checkpoint, load_encoder
from ..core.config import Runtime
from ..core.device import resolve_device
from ..core.embed import embed_paths
from ..core.images import Failure, Scan, scan_images
from .modelfile import index_amp, model_of
from ..core.model import Encoder
from .store import Store


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

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape `siamsearch query --json` prints for one query."""
        return {"query": str(self.query), "neighbors": [
            {"rank": n.rank, "path": n.path, "distance": round(n.distance, 6), "identity": n.identity}
            for n in self.neighbors]}


class Searcher:
    """An index with the encoder that built it, to search by image."""

    def __init__(self, store: Store, model: Encoder, ckpt: Checkpoint, runtime: Runtime = Runtime()) -> None:
        """Check the model built the index; resolve the device once, as every query runs on it."""
        store.check_model(ckpt.fingerprint)
        self.device = resolve_device(runtime.device)
        self.amp = index_amp(store, self.device, runtime.amp)  # queries embed in the index's precision
        self.store, self.model, self.ckpt, self.runtime = store, model.to(self.device), ckpt, runtime

    @classmethod
    def open(cls, index_dir: Path | str, model_path: Path | str | None = None,
             runtime: Runtime = Runtime()) -> Searcher:
        """Open an index and load its model (from the manifest unless one is given)."""
        store = Store.open(Path(index_dir).expanduser())
        model, ckpt = load_encoder(model_of(store, model_path))
        return cls(store, model, ckpt, runtime)

    def query_vectors(self, vectors: np.ndarray, k: int = 10, margin: float | None = None,
                      exclude: Sequence[Path | None] | None = None) -> list[list[Neighbor]]:
        """Neighbours of (Q, D) unit vectors; `exclude[i]` drops that file from query i's results."""
        exclude = exclude or [None] * len(vectors)
        extra = 1 if any(e is not None for e in exclude) else 0
        distances, ids = self.store.search(vectors, k + extra)
        out = []
        for q, (dist, idx) in enumerate(zip(distances, ids)):
            keep = [(d, i) for d, i in zip(dist, idx) if i >= 0 and (margin is None or d <= margin)]
            rows = self.store.rows([i for _, i in keep])
            hits = [(d, r) for (d, _), r in zip(keep, rows) if exclude[q] is None or r.abspath != exclude[q]][:k]
            out.append([Neighbor(rank, r.path, float(d), r.identity, r.id)
                        for rank, (d, r) in enumerate(hits, start=1)])
        return out

    def query_images(self, paths: Sequence[Path | str], k: int = 10, margin: float | None = None,
                     exclude_self: bool = False) -> tuple[list[QueryResult], list[Failure]]:
        """Embed query images (folders expand to their images) and find their neighbours."""
        scans = [scan_images(p) if Path(p).is_dir() else Scan([Path(p)]) for p in paths]
        files = [f for scan in scans for f in scan.images]
        result = embed_paths(self.model, self.ckpt.preprocess, files, batch_size=self.runtime.batch_size,
                             workers=self.runtime.workers, device=self.device, amp=self.amp,
                             decode=self.runtime.decode)
        queries = [p.resolve() for p in result.paths]
        hits = self.query_vectors(result.vectors, k, margin, queries if exclude_self else None)
        failures = [f for scan in scans for f in scan.failures] + result.failures  # a folder's links and FIFOs too
        return [QueryResult(p, h) for p, h in zip(result.paths, hits)], failures
