"""Parquet shards between the stages: the embeddings folder, its manifest, ids, and reading vectors back.

An embeddings folder holds:
    manifest.json                 root, model and fingerprint, dim, the planned shards and the finished ones
    inputs/NNNNN.parquet          the files of input shard N: (shard, row, path relative to root), fixed once
    vectors/NNNNN/part-R.parquet  what embedding shard N gave, from its row R on: one Parquet part per batch

Every part is written atomically, and a shard counts as finished only when the manifest lists it, which
the driver does once every row of the shard is in its parts. A re-run removes the parts of unfinished
shards and embeds them again, and skips finished ones. Ids come from (shard, row), so a retried batch
writes the same ids again; readers treat ids as a set (Ray's task retries are at-least-once).

The folders the later stages write (an index, pairs) hold made_by.json: the command that made them and a key,
the hash of the embeddings folder, its manifest and the parameters. A stage resumes or replaces only its own
parts, made from the same key; a folder it did not make is refused, so nothing else is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.atomic import write_atomic, write_json
from ..core.errors import NotFoundError, RefusedError, UsageError

MANIFEST, INPUTS, VECTORS, MADE_BY = "manifest.json", "inputs", "vectors", "made_by.json"
FORMAT = "siamsearch-embeddings"
FORMAT_VERSION = 1
ROW_BITS = 32  # id = shard << ROW_BITS | row: deterministic, unique, and under SQLite's int64
ROW_COLUMNS = ("id", "path", "identity", "size", "mtime_ns", "width", "height", "sha256")  # rows.sqlite's


def make_ids(shard: int | np.ndarray, row: int | np.ndarray) -> np.ndarray:
    """The stable id of (input shard, row): the same on every run and every retry."""
    return (np.asarray(shard, np.int64) << ROW_BITS) | np.asarray(row, np.int64)


def read_manifest(folder: Path) -> dict[str, Any]:
    """An embeddings folder's manifest.

    Raises:
        NotFoundError: the folder holds no embeddings manifest.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{folder} is not an embeddings folder (no {MANIFEST}); make one with "
                            "`siamsearch cluster embed`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > FORMAT_VERSION:
        raise UsageError(f"{path} is not a siamsearch embeddings manifest of version {FORMAT_VERSION}")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (only the driver writes it)."""
    write_json(Path(folder) / MANIFEST, manifest)


def new_manifest(*, root: str, model: str | None, fingerprint: str, encoder: dict[str, Any], dim: int,
                 shards: Sequence[int]) -> dict[str, Any]:
    """A manifest for planned shards (shards[n] = how many input rows shard n has), none finished."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "root": root, "model": model, "fingerprint": fingerprint,
            "encoder": encoder, "dim": dim, "shards": [int(n) for n in shards], "finished": {}}


def output_key(folder: Path, manifest: dict[str, Any], **params: Any) -> str:
    """The key of what a stage makes from an embeddings folder: its path, manifest and the parameters, hashed."""
    text = json.dumps({"embeddings": str(folder), "manifest": manifest, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def made_key(out: Path, command: str) -> str | None:
    """The key command recorded in out when it made it; None for a missing or empty folder.

    Raises:
        RefusedError: out holds files command did not make (an embeddings folder, another index, anything else).
    """
    try:
        made = json.loads((out / MADE_BY).read_text())
        if made["command"] == command:
            return str(made["key"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RefusedError(f"{out} is not empty and was not made by `siamsearch {command}`; choose a new or "
                           "empty folder")
    return None


def mark_made(out: Path, command: str, key: str) -> None:
    """Record that command makes out from the embeddings and parameters key names (before any part is written)."""
    write_json(out / MADE_BY, {"command": command, "key": key})


def finished(manifest: dict[str, Any]) -> list[int]:
    """The shards every row of which is written, in order."""
    return sorted(int(s) for s in manifest["finished"])


def write_table(path: Path, table: pa.Table) -> None:
    """Write one Parquet file atomically: whole or absent."""
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def inputs_file(folder: Path, shard: int) -> Path:
    """Where input shard `shard` lists its files."""
    return Path(folder) / INPUTS / f"{shard:05d}.parquet"


def shard_folder(folder: Path, shard: int) -> Path:
    """Where the parts of shard `shard` go."""
    return Path(folder) / VECTORS / f"{shard:05d}"


def plan_inputs(folder: Path, paths: Sequence[str], shard_size: int) -> list[int]:
    """Cut the (sorted) relative paths into input shards of shard_size files, written once; the row counts."""
    if shard_size < 1:
        raise UsageError("--shard-size must be >= 1")
    counts = []
    for shard, start in enumerate(range(0, len(paths), shard_size)):
        part = list(paths[start:start + shard_size])
        table = pa.table({"shard": pa.array([shard] * len(part), pa.int64()),
                          "row": pa.array(range(len(part)), pa.int64()), "path": pa.array(part, pa.string())})
        write_table(inputs_file(folder, shard), table)
        counts.append(len(part))
    return counts


def write_part(folder: Path, shard: int, table: pa.Table) -> Path:
    """One batch of shard `shard` (its rows ascending), named by its first row: a retry overwrites it."""
    path = shard_folder(folder, shard) / f"part-{int(table['row'][0].as_py()):010d}.parquet"
    write_table(path, table)
    return path


def clear_shard(folder: Path, shard: int) -> None:
    """Remove what an unfinished shard wrote before it is embedded again: its ids then appear once."""
    shutil.rmtree(shard_folder(folder, shard), ignore_errors=True)


def written(folder: Path, shard: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """What the parts of shard `shard` hold: its distinct rows, sorted, and the (path, reason) of its failed ones."""
    parts = sorted(shard_folder(folder, shard).glob("part-*.parquet"))
    if not parts:
        return np.zeros(0, np.int64), []
    table = pa.concat_tables([pq.read_table(p, columns=["row", "path", "error"]) for p in parts])
    rows, first = np.unique(table["row"].to_numpy(), return_index=True)
    failed = table.take(pa.array(first)).filter(pc.not_equal(table.take(pa.array(first))["error"], ""))
    return rows, list(zip(failed["path"].to_pylist(), failed["error"].to_pylist()))


def read_shard(folder: Path, shard: int, columns: Sequence[str] | None = None) -> pa.Table:
    """The readable rows of one shard, each id once, by id (failed rows have no vector and stay out)."""
    parts = sorted(shard_folder(folder, shard).glob("part-*.parquet"))
    if not parts:
        raise NotFoundError(f"{shard_folder(folder, shard)} holds no parts; run `siamsearch cluster embed` again")
    wanted = None if columns is None else list(dict.fromkeys(["id", "error", *columns]))
    table = pa.concat_tables([pq.read_table(p, columns=wanted) for p in parts])
    table = table.filter(pc.equal(table["error"], ""))
    ids = table["id"].to_numpy()
    order = np.argsort(ids, kind="stable")
    first = np.r_[True, ids[order][1:] != ids[order][:-1]] if len(ids) else np.zeros(0, bool)
    return table.take(pa.array(order[first]))


def vectors_of(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,) int64, vectors (N, D) float32) of a shard table."""
    vec = table["vec"].combine_chunks()
    dim = vec.type.list_size
    flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table["id"].to_numpy().astype(np.int64), flat.reshape(len(table), dim)


def read_vectors(folder: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of one finished shard."""
    return vectors_of(read_shard(folder, shard, ["vec"]))


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 as a Parquet column of fixed-size lists."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])


def part_table(shard: int, rows: np.ndarray, columns: dict[str, Any], vectors: np.ndarray) -> pa.Table:
    """A part: id, shard, row, the row columns, error ("" when readable) and vec."""
    rows = np.asarray(rows, np.int64)
    return pa.table({"id": make_ids(shard, rows), "shard": np.full(len(rows), shard, np.int64), "row": rows,
                     **columns, "vec": vector_column(vectors)})


def write_embeddings(folder: Path, vectors: np.ndarray, shards: int, *, fingerprint: str = "synthetic",
                     root: str = "/synthetic") -> dict[str, Any]:
    """An embeddings folder from vectors already made (benchmarks, tests, embeddings from elsewhere).

    Vectors go to `shards` contiguous slices, in order; rows get placeholder paths img/NNNNNNNNN.jpg.
    """
    folder = Path(folder)
    n, dim = vectors.shape
    bounds = np.linspace(0, n, shards + 1).astype(int)
    counts = []
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = np.arange(hi - lo)
        paths = [f"img/{i:09d}.jpg" for i in range(lo, hi)]
        columns = {"path": paths, "identity": pa.nulls(len(rows), pa.string()), "size": np.zeros(len(rows), np.int64),
                   "mtime_ns": np.zeros(len(rows), np.int64), "width": np.ones(len(rows), np.int32),
                   "height": np.ones(len(rows), np.int32), "sha256": pa.nulls(len(rows), pa.string()),
                   "error": [""] * len(rows)}
        write_part(folder, shard, part_table(shard, rows, columns, vectors[lo:hi]))
        counts.append(len(rows))
    manifest = new_manifest(root=root, model=None, fingerprint=fingerprint, encoder={}, dim=dim, shards=counts)
    manifest["finished"] = {str(s): {"rows": c, "failures": 0} for s, c in enumerate(counts)}
    write_manifest(folder, manifest)
    return manifest
