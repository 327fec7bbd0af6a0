"""Embedding a collection on Ray Data: CPU decode tasks feed a pool of encoder actors, parts land in shards.

The pipeline is one item per input shard → flat_map(input_rows) → map_batches(decode_batch) on CPU tasks →
map_batches(Embedder, concurrency=N, num_gpus=G) on stateful actors that load the model once →
map_batches(write_batch), which writes each batch as an atomic Parquet part of its shard. Ray Data streams
the three stages, so decoding on every core of every node keeps the encoders busy. The driver marks a shard
finished in the manifest once all its rows are written; a re-run embeds only the shards not marked.

Decoding, the model and the maths are the single-machine ones (siamsearch.core.embed), so a vector made here
equals the one `siamsearch index` makes for the same file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import torch

from ..core.checkpoint import load_encoder
from ..core.config import Preprocess, Runtime, to_dict
from ..core.device import resolve_device
from ..core.decoding import DecodedImages, Progress
from ..core.embed import embed_tensors
from ..core.errors import NotFoundError, UsageError
from ..core.images import Failure, identity_of, scan_images
from ..core.images import file_sha256
from . import shards

ROW_FIELDS = ("path", "identity", "size", "mtime_ns", "width", "height", "sha256", "error")
PART_ROWS = 8192  # rows the write stage gathers into one part: few files per shard, whatever the batch size


@dataclass(frozen=True)
class ModelLoader:
    """Loads the encoder inside each actor: the path travels to the workers, the weights are read there."""

    path: str
    device: str = "auto"

    def __call__(self) -> tuple[torch.nn.Module, Preprocess, torch.device]:
        """(model in eval mode on its device, its preprocessing, the device)."""
        device = resolve_device(self.device)
        model, ckpt = load_encoder(Path(self.path), device)
        return model, ckpt.preprocess, device


def input_rows(item: dict[str, int], folder: str) -> list[dict[str, Any]]:
    """Read stage: the (shard, row, path) rows of one input shard, read on a worker, not by the driver."""
    return pq.read_table(shards.inputs_file(Path(folder), item["shard"])).to_pylist()


def decode_batch(batch: dict[str, np.ndarray], root: str, size: int, channels: int,
                 framing: str = "centre") -> dict[str, Any]:
    """CPU stage: decode, stat and hash a batch of input rows; a bad file keeps its row, with its reason."""
    paths = [Path(root) / p for p in batch["path"]]
    images = DecodedImages(paths, [size], channels, framing=framing)
    pixels = np.zeros((len(paths), channels, size, size), np.uint8)
    out: dict[str, list] = {name: [] for name in ROW_FIELDS}
    for i, path in enumerate(paths):
        item = images[i]
        views, (width, height), reason = item.views, item.size, item.reason
        try:
            st = path.stat()
        except OSError as exc:
            st, reason = None, reason or f"cannot read ({exc.strerror or exc})"
        if views is not None and not reason:
            pixels[i] = views[0].numpy()
        for name, value in zip(ROW_FIELDS, (str(batch["path"][i]), identity_of(path, Path(root)),
                                            st.st_size if st else 0, st.st_mtime_ns if st else 0, width, height,
                                            file_sha256(path) if not reason else None, reason)):
            out[name].append(value)
    return {"shard": batch["shard"], "row": batch["row"], **out, "pixels": pixels}


class Embedder:
    """GPU (or CPU) stage: a stateful actor holding the encoder; adds vec (B, D) float32, drops the pixels."""

    def __init__(self, load: Callable[[], tuple[torch.nn.Module, Preprocess, torch.device]]) -> None:
        self.model, self.pre, self.device = load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ok = np.asarray(batch["error"]) == ""
        vectors = np.zeros((len(ok), self.model.cfg.embedding_dim), np.float32)
        if ok.any():
            vectors[ok] = embed_tensors(self.model, torch.from_numpy(batch["pixels"][ok]), self.pre, self.device)
        return {**{k: v for k, v in batch.items() if k != "pixels"}, "vec": vectors}


def write_batch(batch: dict[str, Any], folder: str) -> dict[str, np.ndarray]:
    """Write stage: each shard's rows of the batch as one atomic part; returns (shard, rows written)."""
    shard_of = np.asarray(batch["shard"], np.int64)
    done = []
    for shard in np.unique(shard_of).tolist():
        pick = np.flatnonzero(shard_of == shard)
        pick = pick[np.argsort(np.asarray(batch["row"])[pick])]
        columns = {name: pa.array([batch[name][i] for i in pick]) for name in ROW_FIELDS}
        for name, kind in (("size", pa.int64()), ("mtime_ns", pa.int64()), ("width", pa.int32()),
                           ("height", pa.int32()), ("identity", pa.string()), ("sha256", pa.string())):
            columns[name] = columns[name].cast(kind)
        shards.write_part(Path(folder), shard, shards.part_table(shard, np.asarray(batch["row"])[pick], columns,
                                                                 np.asarray(batch["vec"])[pick]))
        done.append((shard, len(pick)))
    return {"shard": np.array([d[0] for d in done], np.int64), "rows": np.array([d[1] for d in done], np.int64)}


@dataclass
class EmbedRun:
    """What `cluster embed` did: shards embedded now and before, rows, and the files skipped."""

    out: Path
    shards: int = 0
    skipped_shards: int = 0  # finished by an earlier run: not embedded again
    embedded: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        return {"out": str(self.out), "shards": self.shards, "skipped_shards": self.skipped_shards,
                "embedded": self.embedded, "seconds": round(self.seconds, 3),
                "failures": [f.to_dict() for f in self.failures]}


def _source_paths(source: Path) -> tuple[Path, list[str], list[Failure]]:
    """(root, sorted paths relative to it, scan failures) of a folder, or of a file listing image paths."""
    if source.is_dir():
        scan = scan_images(source)
        return source, sorted(p.relative_to(source).as_posix() for p in scan.images), list(scan.failures)
    if not source.is_file():
        raise NotFoundError(f"no such folder or list file: {source}")
    listed = [Path(line).expanduser().resolve() for line in source.read_text().splitlines() if line.strip()]
    if not listed:
        raise UsageError(f"{source} lists no images")
    root = Path(os.path.commonpath([p.parent for p in listed]))
    return root, sorted({p.relative_to(root).as_posix() for p in listed}), []


def _plan(source: Path, out: Path, model: Path, shard_size: int) -> tuple[dict[str, Any], list[Failure]]:
    """The manifest of out: the existing one (same root and model), or a new plan of input shards."""
    if (out / shards.MANIFEST).exists():
        manifest = shards.read_manifest(out)
        _, ckpt = load_encoder(model)
        if manifest["fingerprint"] != ckpt.fingerprint or manifest["root"] != str(_source_paths_root(source)):
            raise UsageError(f"{out} holds embeddings of another folder or model; choose another --out")
        return manifest, []
    root, paths, failures = _source_paths(source)
    if not paths:
        raise UsageError(f"{source} holds no images")
    _, ckpt = load_encoder(model)
    counts = shards.plan_inputs(out, paths, shard_size)
    manifest = shards.new_manifest(root=str(root), model=str(model.resolve()), fingerprint=ckpt.fingerprint,
                                   encoder=to_dict(ckpt.encoder), dim=ckpt.encoder.embedding_dim, shards=counts)
    manifest["preprocess"] = to_dict(ckpt.preprocess)  # what the decode tasks need, without loading the model
    shards.write_manifest(out, manifest)
    return manifest, failures


def _source_paths_root(source: Path) -> Path:
    """The root a source resolves to (a folder is its own root)."""
    return source if source.is_dir() else _source_paths(source)[0]


def embed_collection(source: Path | str, out: Path | str, model: Path | str, *, shard_size: int = 10_000,
                     batch_size: int = Runtime.batch_size, concurrency: int = 1, num_gpus: float = 0,
                     device: str = "auto",
                     load: Callable[[], tuple[torch.nn.Module, Preprocess, torch.device]] | None = None,
                     progress: Progress | None = None) -> EmbedRun:
    """Embed every image of a folder (or list file) into Parquet shards under out, on the connected Ray cluster.

    A second run with the same out embeds only the shards the first did not finish. load replaces the
    default ModelLoader(model, device), e.g. to wrap the encoder.

    Raises:
        NotFoundError: no such source. UsageError: no images, or out holds another folder's or model's shards.
    """
    start = time.perf_counter()
    # absolute paths: Ray workers on other nodes, or in another folder, read and write them
    source, out, model = (Path(p).expanduser().resolve() for p in (source, out, model))
    manifest, failures = _plan(source, out, model, shard_size)
    todo = [s for s in range(len(manifest["shards"])) if str(s) not in manifest["finished"]]
    run = EmbedRun(out, len(manifest["shards"]), len(manifest["shards"]) - len(todo), failures=failures)
    for shard in todo:
        shards.clear_shard(out, shard)
    size, channels = manifest["preprocess"]["image_size"], manifest["preprocess"]["channels"]
    framing = manifest["preprocess"].get("framing", "centre")  # manifests from before framing centred
    total = sum(manifest["shards"][s] for s in todo)
    if todo:
        ds = (ray.data.from_items([{"shard": s} for s in todo])
              .flat_map(input_rows, fn_kwargs={"folder": str(out)})
              .map_batches(decode_batch, batch_size=batch_size, fn_kwargs={"root": manifest["root"], "size": size,
                                                                          "channels": channels, "framing": framing})
              .map_batches(Embedder, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
                           num_gpus=num_gpus,
                           fn_constructor_args=(load or ModelLoader(str(model), device),))
              .map_batches(write_batch, batch_size=PART_ROWS, fn_kwargs={"folder": str(out)}))
        for _ in _finished_as_written(ds.iter_rows(), manifest, out, run, progress, total):
            shards.write_manifest(out, manifest)
        if [s for s in todo if _mark_if_complete(manifest, out, s, run)]:  # a retry's parts may have been counted twice
            shards.write_manifest(out, manifest)
    run.seconds = time.perf_counter() - start
    return run


def _finished_as_written(summaries: Iterator[dict[str, Any]], manifest: dict[str, Any], out: Path, run: EmbedRun,
                         progress: Progress | None, total: int) -> Iterator[int]:
    """Follow the written parts; yield each shard as soon as every one of its rows is on disk (then it is marked)."""
    seen: dict[int, int] = {}
    done = 0
    for summary in summaries:
        shard = int(summary["shard"])
        seen[shard] = seen.get(shard, 0) + int(summary["rows"])
        done += int(summary["rows"])
        if progress:
            progress(min(done, total), total)
        if seen[shard] >= manifest["shards"][shard] and _mark_if_complete(manifest, out, shard, run):
            yield shard


def _mark_if_complete(manifest: dict[str, Any], out: Path, shard: int, run: EmbedRun) -> bool:
    """Mark a shard finished when its parts hold every one of its rows; True when it was marked now."""
    if str(shard) in manifest["finished"]:
        return False
    rows, failed = shards.written(out, shard)
    if len(rows) != manifest["shards"][shard]:
        return False
    manifest["finished"][str(shard)] = {"rows": len(rows) - len(failed), "failures": len(failed)}
    run.embedded += len(rows) - len(failed)
    run.failures.extend(Failure(Path(manifest["root"]) / p, reason) for p, reason in failed)
    return True
