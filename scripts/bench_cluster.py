"""siamsearch.cluster on one local Ray against the single-process product: dedup of 1,000,000 vectors, and embedding.

1. bench_dedup's 1,000,000 clustered 128-d unit vectors with near-copies planted, margin 0.2:
   * today: the store built through indexing.sync (ivf at this size, as `auto` picks), then dedup's
     find_duplicates in a child process (its time and peak RSS), and find_pairs for the pair set;
   * cluster: the same vectors as 20 Parquet shards, `cluster index` (on-disk IVF) and `cluster dedup`
     (exact, by cells) on a local Ray; the peak RSS is the sum over the driver and every Ray process of
     each one's own peak (VmHWM), an upper bound of what they held at once.
   The pair sets are compared: the cluster's is exact, today's comes from an approximate IVF search.
2. 2,000 small images (64 px PNGs) embedded by `siamsearch index` and by `cluster embed` with one small
   untrained model on the CPU: the engine's overhead on one machine (Ray started beforehand, its start
   time printed apart).

The script re-runs itself inside a network namespace with loopback alone (`unshare -n`, root), so no Ray
traffic leaves the machine.

    nice -n 10 .venv/bin/python scripts/bench_cluster.py              # the figures in docs/scaling.md
    nice -n 10 .venv/bin/python scripts/bench_cluster.py --n 100000   # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_dedup import MARGIN, build_store, index_of, make_data, plant
from PIL import Image

from siamsearch.duplicates.closepairs import find_pairs
from siamsearch.cluster import shards
from siamsearch.cluster.building import build_cluster_index
from siamsearch.cluster.cells import dedup_cells
from siamsearch.cluster.embedding import embed_collection
from siamsearch.cluster.runtime import connect
from siamsearch.core.config import EncoderConfig, Runtime
from siamsearch.duplicates.dedup import find_duplicates
from siamsearch.index.store import Store

LOOPBACK = "SIAMSEARCH_BENCH_LOOPBACK"


def today(index: str, margin: float) -> dict:
    """In a child process: find_duplicates timed with its peak RSS, then find_pairs as vector numbers."""
    with Store.open(index) as store:
        start = time.perf_counter()
        result = find_duplicates(store, margin)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        i, j, _ = find_pairs(store, margin)
        ids = np.union1d(i, j)
        number = dict(zip(ids.tolist(), (index_of(r.path) for r in store.rows(ids))))
        pairs = {tuple(sorted((number[a], number[b]))) for a, b in zip(i.tolist(), j.tolist())}
        return {"seconds": seconds, "peak_gb": peak, "groups": len(result.groups), "pairs": pairs,
                "kind": store.kind}


def ray_peak_gb() -> float:
    """Sum of VmHWM (each process's own peak RSS) over this process and all its descendants (the local Ray)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, grew = {os.getpid()}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in family} - family
        family |= more
        grew = bool(more)
    total = 0
    for pid in family:
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            continue
    return total / 2**20


def dedup_bench(work: Path, n: int, dim: int, seed: int, shard_count: int) -> None:
    """Part 1: the same vectors through today's dedup and through cluster index + cluster dedup."""
    x = make_data(n, 0, dim, seed)[0]
    labels = plant(x, np.random.default_rng(seed))
    print(f"{n:,} x {dim}-d vectors, {labels.max() + 1:,} planted groups; margin {MARGIN}", flush=True)
    build_store(work / "single", x).close()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        single = pool.apply(today, (str(work / "single" / "index"), MARGIN))
    print(f"  today's dedup ({single['kind']}): {single['seconds']:.1f} s, peak RSS {single['peak_gb']:.2f} GB, "
          f"{len(single['pairs']):,} pairs, {single['groups']:,} groups", flush=True)

    start = time.perf_counter()
    shards.write_embeddings(work / "emb", x, shard_count)
    print(f"  {shard_count} Parquet shards written in {time.perf_counter() - start:.1f} s", flush=True)
    bounds = np.linspace(0, n, shard_count + 1).astype(int)
    del x
    built = build_cluster_index(work / "emb", work / "cluster_index")
    print(f"  cluster index: {built.seconds:.1f} s, {built.count:,} vectors in {built.nlist} lists, "
          f"nprobe {built.tuning['value']} (recall@10 {built.tuning['recall']})", flush=True)
    run = dedup_cells(work / "emb", work / "cluster_dedup", MARGIN)
    pairs = _cluster_pairs(work / "cluster_dedup", bounds)
    peak = ray_peak_gb()
    print(f"  cluster dedup (exact, {run.routing['cells']} cells, {run.routing['copies_per_vector']} copies a "
          f"vector): {run.seconds:.1f} s, {len(pairs):,} pairs, {len(run.groups):,} groups; peak RSS summed over "
          f"driver and Ray processes {peak:.2f} GB", flush=True)
    common = len(pairs & single["pairs"])
    print(f"  pairs: {common:,} in both, {len(pairs - single['pairs']):,} only by cells (missed by today's "
          f"approximate search), {len(single['pairs'] - pairs):,} only today's; same pairs: {pairs == single['pairs']}; "
          f"time cluster / today {run.seconds / single['seconds']:.2f} (index build apart: {built.seconds:.1f} s)",
          flush=True)


def _cluster_pairs(out: Path, bounds: np.ndarray) -> set[tuple[int, int]]:
    """The pair shards as pairs of vector numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "pairs").glob("*.parquet"))])
    number = lambda ids: bounds[ids >> shards.ROW_BITS] + (ids & (2**shards.ROW_BITS - 1))  # noqa: E731
    i, j = number(table["i"].to_numpy()), number(table["j"].to_numpy())
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


def embed_bench(work: Path, images: int, seed: int) -> None:
    """Part 2: the same small images through `siamsearch index` and through `cluster embed`."""
    import torch

    from siamsearch.core.checkpoint import save_model
    from siamsearch.index.indexing import index_folder
    from siamsearch.core.model import build_encoder

    rng = np.random.default_rng(seed)
    folder = work / "images"
    for k in range(images):
        (folder / f"{k // 500:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(folder / f"{k // 500:02d}" / f"{k:05d}.png")
    torch.manual_seed(seed)
    model = work / "model.pt"
    save_model(model, build_encoder(EncoderConfig(backbone="small", dim=64, image_size=64)))
    start = time.perf_counter()
    index_folder(folder, work / "index", model, runtime=Runtime(device="cpu"))
    single = time.perf_counter() - start
    run = embed_collection(folder, work / "emb_images", model, shard_size=500, batch_size=64, device="cpu")
    print(f"{images:,} images of 64 px: siamsearch index {single:.1f} s, cluster embed {run.seconds:.1f} s "
          f"({run.embedded:,} embedded); cluster / index = {run.seconds / single:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--images", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if os.environ.get(LOOPBACK) != "1":
        os.environ[LOOPBACK] = "1"
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up; exec "$@"', "sh", sys.executable,
                              *sys.argv])
    start = time.perf_counter()
    connect(num_cpus=os.cpu_count(), object_store_memory=2 * 2**30)
    print(f"local Ray started in {time.perf_counter() - start:.1f} s ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_cluster.") as tmp:
        embed_bench(Path(tmp), args.images, args.seed)
        dedup_bench(Path(tmp), args.n, args.dim, args.seed, args.shards)


if __name__ == "__main__":
    main()
