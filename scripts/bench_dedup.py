"""Dedup at scale: siamsearch.duplicates.dedup over a 1,000,000-vector store, and blocked range search vs a dense N×N matrix.

Vectors are bench_search's clustered unit vectors (about 1,000 per cluster) in which groups of 2-4
near-duplicates are planted: copies of one vector with noise of norm 0.02-0.1, so their distances stay
below the margin while unrelated neighbours in a cluster sit above 0.5.

The store is built through the real code path: Store.create, then siamsearch.index.indexing.sync over one tiny
placeholder file per vector (its number as content: byte-identical files would be embedded once) with an
embedding stream that returns that vector (no image is decoded). The sync commits in growing chunks and
lays out the kind `auto` picks at that size (ivf from 200,000 vectors), tuned as usual. The build runs
in a child process, so the peak RSS printed for dedup (that of the parent: the vectors it generated, then
dedup) does not count the build's.

Then, at --dense-n vectors (a flat store), find_pairs is timed against the way popular dedup packages
do it, a dense similarity matrix `sims = X @ X.T` thresholded, and both must find the same pairs.

    .venv/bin/python scripts/bench_dedup.py    # 1,000,000 x 128-d; dense comparison at 20,000
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from bench_search import make_data

from siamsearch.duplicates.closepairs import find_pairs
from siamsearch.duplicates.dedup import find_duplicates
from siamsearch.core.embed import EmbedResult
from siamsearch.index.indexing import sync
from siamsearch.index.store import Store

MARGIN, REVIEW_MARGIN = 0.2, 0.25
PER_FOLDER = 1000


def plant(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Overwrite about 1 in 40 vectors with near copies of another; returns each vector's group (-1: none)."""
    n, dim = x.shape
    sizes = rng.integers(2, 5, n // 100)  # 2-4 members: an original and 1-3 copies
    chosen = rng.permutation(n)[:sizes.sum()]
    labels = np.full(n, -1, np.int64)
    for g, members in enumerate(np.split(chosen, np.cumsum(sizes)[:-1])):
        noise = rng.standard_normal((len(members) - 1, dim)).astype(np.float32)
        noise *= rng.uniform(0.02, 0.1, (len(members) - 1, 1)).astype(np.float32) / np.linalg.norm(noise, axis=1,
                                                                                                  keepdims=True)
        copies = x[members[0]] + noise
        x[members[1:]] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
        labels[members] = g
    return labels


class ArrayEmbed:
    """File v/0000042.png 'embeds' to row 42 of a saved array: an indexing sync without decoding."""

    def __init__(self, npy: Path, batch_size: int = 4096) -> None:
        self.vectors, self.batch_size = np.load(npy, mmap_mode="r"), batch_size

    def __call__(self, paths):
        for i in range(0, len(paths), self.batch_size):
            batch = list(paths[i:i + self.batch_size])
            rows = [int(p.stem) for p in batch]
            yield EmbedResult(batch, np.asarray(self.vectors[rows], np.float32), [(1, 1)] * len(rows))


def index_of(path: str) -> int:
    """0001/0001234.png -> 1234."""
    return int(Path(path).stem)


def build(work: Path, npy: Path) -> dict:
    """Placeholder files and a synced store of the saved vectors (run in a child process)."""
    n, dim = np.load(npy, mmap_mode="r").shape
    root = work / "files"
    start = time.perf_counter()
    for k in range(n):
        if k % PER_FOLDER == 0:
            folder = root / f"{k // PER_FOLDER:04d}"
            folder.mkdir(parents=True)
        (folder / f"{k:07d}.png").write_bytes(b"%d" % k)  # distinct bytes: identical files are embedded once
    files_s = time.perf_counter() - start
    store = Store.create(work / "index", dim=dim, fingerprint="bench", encoder={}, model_path=None, root=root)
    report = sync(store, ArrayEmbed(npy))
    tuning = store.info()["search"]
    setting = f" {tuning['setting']}={tuning['value']} (recall@10 {tuning['recall']})" if tuning else ""
    return {"files_s": files_s, "sync_s": report.seconds, "kind": store.kind + setting}


def build_store(work: Path, x: np.ndarray) -> Store:
    """Save x, build its store in a child process, print what the build took, open the store here."""
    work.mkdir()
    np.save(work / "x.npy", x)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        info = pool.apply(build, (work, work / "x.npy"))
    child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"  build: {len(x):,} placeholder files {info['files_s']:.0f} s, sync {info['sync_s']:.0f} s -> "
          f"{info['kind']} (child peak RSS {child_gb:.2f} GB)", flush=True)
    return Store.open(work / "index")


def planted_recall(result, labels: np.ndarray) -> tuple[int, float, int]:
    """(planted pairs, fraction of them inside one dedup group, groups holding an unplanted or foreign image)."""
    sizes = np.bincount(labels[labels >= 0])
    total = int((sizes * (sizes - 1) // 2).sum())
    together, impure = 0, 0
    for g in result.groups:
        got = labels[[index_of(g.keep.path), *(index_of(m.path) for m in g.members)]]
        counts = np.bincount(got[got >= 0])
        together += int((counts * (counts - 1) // 2).sum())
        impure += int(len(np.unique(got)) > 1)
    return total, together / max(total, 1), impure


def dense_pairs(x: np.ndarray, radius: float) -> set[tuple[int, int]]:
    """Pairs closer than radius from a full N×N similarity matrix (|a-b|² = 2 - 2 a·b for unit rows)."""
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims > 1 - radius**2 / 2, 1))
    return set(zip(i.tolist(), j.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the large store")
    parser.add_argument("--dense-n", type=int, default=20_000, help="vectors for the dense-matrix comparison")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{faiss.omp_get_max_threads()} threads, faiss {faiss.__version__}; margin {MARGIN}, "
          f"review margin {REVIEW_MARGIN}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_dedup.") as tmp:
        x = make_data(args.n, 0, args.dim, args.seed)[0]
        labels = plant(x, rng)
        print(f"{args.n:,} x {args.dim}-d clustered unit vectors, {labels.max() + 1:,} planted groups "
              f"({(labels >= 0).sum():,} vectors)", flush=True)
        store = build_store(Path(tmp) / "large", x)
        del x
        start = time.perf_counter()
        result = find_duplicates(store, MARGIN, REVIEW_MARGIN, keep="largest")
        seconds = time.perf_counter() - start
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        planted, recall, impure = planted_recall(result, labels)
        print(f"  dedup ({store.kind}, approximate={result.approximate}): {seconds:.1f} s, peak RSS {peak_gb:.2f} GB; "
              f"{result.pairs:,} pairs found, {len(result.groups):,} groups ({impure} impure); "
              f"recall of {planted:,} planted pairs {recall:.4f}", flush=True)
        store.close()
        del store, result

        x = make_data(args.dense_n, 0, args.dim, args.seed + 1)[0]
        plant(x, rng)
        store = build_store(Path(tmp) / "dense", x)
        ids, _ = store.vectors()
        to_index = {r.id: index_of(r.path) for r in store.rows(ids)}
        start = time.perf_counter()
        i, j, _ = find_pairs(store, MARGIN)
        blocked_s = time.perf_counter() - start
        start = time.perf_counter()
        dense = dense_pairs(x, MARGIN)
        dense_s = time.perf_counter() - start
        blocked = {tuple(sorted((to_index[a], to_index[b]))) for a, b in zip(i.tolist(), j.tolist())}
        print(f"{args.dense_n:,} vectors ({store.kind}): blocked range search {blocked_s:.2f} s, dense "
              f"{args.dense_n:,}² matrix {dense_s:.2f} s (dense / blocked = {dense_s / blocked_s:.2f}; the matrix alone is "
              f"{args.dense_n**2 * 4 / 2**30:.1f} GiB, {args.n**2 * 4 / 2**40:.1f} TiB at {args.n:,}); "
              f"same pairs: {blocked == dense} ({len(blocked):,} and {len(dense):,})", flush=True)


if __name__ == "__main__":
    main()
