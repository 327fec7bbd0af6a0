"""Where `index`'s time goes on a CPU, and how close it comes to the decode + forward limit (issue 33).

Used by `scripts/bench_index.py --profile`. One indexing run happens in a subprocess of its own (`run_case`),
so that its CPU times are its own and the code it runs can be another checkout's (PYTHONPATH): the main
process's stages are timed by wrapping the functions that do them, the decode workers' CPU time is what the
process's reaped children used (resource.RUSAGE_CHILDREN), and idle is what is left of cores × wall.

The limit: a file costs 1/decode core-seconds to decode (decode measured on one core) and cores/forward
core-seconds to embed (forward measured on all cores); cores kept busy with nothing else give
cores / (cores/forward + 1/decode) images/s.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch

from siamsearch.core.checkpoint import load_encoder
from siamsearch.core.config import Runtime
from siamsearch.core.embed import forward, prepared

TIMED = {  # stage → (module, attribute) of the function whose wall time is the stage's, when the code has it
    "scan + stamps": ("siamsearch.index.indexing", "_stamps"),
    "hash (main)": ("siamsearch.index.indexing", "file_sha256"),
    "frame count (main)": ("siamsearch.index.indexing", "frame_count"),
    "encoder": ("siamsearch.core.embed", "forward"),
    "store add (FAISS + SQLite)": ("siamsearch.index.store.Store", "add"),
    "FAISS write": ("siamsearch.index.store", "write_index"),
    "SQLite insert + commit": ("siamsearch.index.rows.RowTable", "commit"),
}


def _wrap(owner: object, name: str, stage: str, timers: dict[str, list[float]]) -> None:
    """Replace owner.name by the same function adding its wall time to timers[stage]."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timers[stage].append(time.perf_counter() - t0)

    setattr(owner, name, timed)


def _wrap_loader(timers: dict[str, list[float]]) -> None:
    """Time the main process's waits for the next decoded batch (its encoder threads idle then)."""
    import siamsearch.core.embed as embed

    inner = embed.loader

    def waited(*args, **kwargs):
        batches = inner(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                timers["waiting for decode"].append(time.perf_counter() - t0)
            yield batch

    embed.loader = waited


def instrument() -> dict[str, list[float]]:
    """Wrap every stage of TIMED the code has, and the loader; returns the timers they fill."""
    import importlib

    timers: dict[str, list[float]] = defaultdict(list)
    for stage, (where, name) in TIMED.items():
        module, _, cls = where.rpartition(".")
        owner = (getattr(importlib.import_module(module), cls) if cls[0].isupper()
                 else importlib.import_module(where))
        if hasattr(owner, name):
            _wrap(owner, name, stage, timers)
    _wrap(importlib.import_module("siamsearch.index.rows").RowTable, "insert", "SQLite insert + commit", timers)
    _wrap_loader(timers)
    return timers


def run_case(folder: Path, model: Path, index: Path, workers: int | None, threads: int | None, batch: int) -> dict:
    """Index folder from scratch with model, timing each stage; workers/threads None: the code's own choice."""
    from siamsearch.index.indexing import index_folder

    if threads:
        torch.set_num_threads(threads)
    timers = instrument()
    net, ckpt = load_encoder(model)
    pre = ckpt.preprocess
    with torch.inference_mode():  # one-time costs (oneDNN's kernels) out of the measurement
        forward(prepared(net, torch.device("cpu")), torch.zeros(batch, pre.channels, pre.image_size, pre.image_size,
                                                                  dtype=torch.uint8), pre, torch.device("cpu"))
    timers.clear()
    cores = os.cpu_count() or 1
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    store, report = index_folder(folder, index, model, rebuild=True,
                                 runtime=Runtime(device="cpu", workers=workers, batch_size=batch))
    wall = time.perf_counter() - t0
    store.close()
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    workers_cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    stages = {stage: round(sum(t), 2) for stage, t in sorted(timers.items())}
    return {"images": report.added, "failures": len(report.failures), "wall_s": round(wall, 2),
            "images_per_s": round(report.added / wall, 1), "cores": cores, "main_cpu_s": round(main_cpu, 2),
            "workers_cpu_s": round(workers_cpu, 2), "idle_core_s": round(cores * wall - main_cpu - workers_cpu, 2),
            "main_stages_wall_s": stages}


def rates(paths: list[Path], model: Path, batch: int, n_forward: int = 256, tries: int = 3) -> dict:
    """Images/s of the encoder on ready batches (all cores), and per-file costs on one core: decode to the
    model's view, SHA-256, frame count; each the best of `tries` (the least disturbed on a shared machine)."""
    from siamsearch.core.decoding import DecodedImages
    from siamsearch.core.images import file_sha256, frame_count

    cores = os.cpu_count() or 1
    net, ckpt = load_encoder(model)
    pre, cpu = ckpt.preprocess, torch.device("cpu")
    net = prepared(net, cpu)
    torch.set_num_threads(cores)
    x = torch.randint(0, 255, (batch, pre.channels, pre.image_size, pre.image_size), dtype=torch.uint8)
    steps, seconds = max(2, n_forward // batch), []
    with torch.inference_mode():
        forward(net, x, pre, cpu)
        for _ in range(tries):
            t0 = time.perf_counter()
            for _ in range(steps):
                forward(net, x, pre, cpu)
            seconds.append(time.perf_counter() - t0)
    fwd = steps * batch / min(seconds)
    torch.set_num_threads(1)  # as in a decode worker
    images = DecodedImages(paths, [pre.image_size], pre.channels, framing=pre.framing)
    costs = {}
    for what, one in (("decode", images.__getitem__), ("hash", lambda i: file_sha256(paths[i])),
                      ("frames", lambda i: frame_count(paths[i]))):
        seconds = []
        for _ in range(tries):
            t0 = time.perf_counter()
            for i in range(len(paths)):
                one(i)
            seconds.append(time.perf_counter() - t0)
        costs[what] = min(seconds) / len(paths)
    torch.set_num_threads(cores)
    limit = cores / (cores / fwd + costs["decode"])
    return {"forward_per_s": round(fwd, 1), "decode_per_s_1core": round(1 / costs["decode"], 1),
            "encoder_ms_per_image_1core": round(1000 * cores / fwd, 1),
            "decode_ms": round(1000 * costs["decode"], 2), "hash_ms": round(1000 * costs["hash"], 2),
            "frames_ms": round(1000 * costs["frames"], 2), "limit_per_s": round(limit, 1)}


def main() -> None:
    """`python scripts/index_profile.py FOLDER MODEL INDEX WORKERS THREADS BATCH`: one run_case as a JSON line."""
    import sys

    folder, model, index, workers, threads, batch = sys.argv[1:7]
    as_int = lambda s: None if s == "auto" else int(s)  # noqa: E731
    print(json.dumps(run_case(Path(folder), Path(model), Path(index), as_int(workers), as_int(threads), int(batch))))


if __name__ == "__main__":
    main()
