"""Speed and recall of the store's index kinds on synthetic clustered embeddings.

Builds flat, hnsw and ivf with the store's own factory, siamsearch.index.ann.build_index, which also tunes
the approximate kinds as a sync does (the cheapest efSearch / nprobe reaching 0.95 recall@10 on 500
vectors held back from the build). Then it times held-out queries, k=10, against flat, which is exact.

    .venv/bin/python scripts/bench_search.py    # 1,000,000 x 128-d vectors, 1,000 queries
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from siamsearch.index.ann import build_index

K = 10


def gaussian_mixture(n: int, centres: np.ndarray, spreads: np.ndarray, weights: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """n unit vectors: a centre drawn by weight, plus isotropic noise of that centre's spread."""
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks, to bound the float temporaries
        m = min(100_000, n - start)
        c = rng.choice(len(centres), size=m, p=weights)
        x = centres[c] + rng.standard_normal((m, dim), dtype=np.float32) * spreads[c, None] / np.sqrt(dim)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(n: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Database and held-out queries from one mixture: ~1,000 points per cluster, uneven sizes and spreads."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 1000)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spreads = rng.uniform(0.4, 0.9, clusters).astype(np.float32)
    weights = rng.lognormal(0.0, 0.5, clusters)
    weights /= weights.sum()
    return (gaussian_mixture(n, centres, spreads, weights, rng),
            gaussian_mixture(queries, centres, spreads, weights, rng))


def timed_search(index: faiss.Index, xq: np.ndarray) -> tuple[float, np.ndarray]:
    """Queries per second of one batched search (after a small warm-up), and the ids found."""
    index.search(xq[:50], K)
    start = time.perf_counter()
    _, ids = index.search(xq, K)
    return len(xq) / (time.perf_counter() - start), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k nearest found."""
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--queries", type=int, default=1_000, help="held-out query vectors")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    xb, xq = make_data(args.n, args.queries, args.dim, args.seed)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"{args.n:,} x {args.dim}-d clustered unit vectors, {args.queries:,} held-out queries, k={K}, "
          f"{faiss.omp_get_max_threads()} threads, faiss {faiss.__version__}")
    print(f"{'kind':<6} {'setting':<14} {'build s':>8} {'queries/s':>10} {'x flat':>7} {'recall@10':>10}")
    truth, flat_qps = None, None
    for kind in ("flat", "hnsw", "ivf"):
        start = time.perf_counter()
        index, tuning = build_index(kind, ids, xb, seed=args.seed)
        built = time.perf_counter() - start
        qps, found = timed_search(index, xq)
        truth = found if truth is None else truth
        flat_qps = flat_qps or qps
        setting = f"{tuning['setting']}={tuning['value']}" if tuning else "exact"
        print(f"{kind:<6} {setting:<14} {built:8.1f} {qps:10,.0f} {qps / flat_qps:6.1f}x {recall(found, truth):10.3f}",
              flush=True)
        del index


if __name__ == "__main__":
    main()
