"""The Ray half of tests/test_cluster.py, run in a network namespace with loopback alone: one local Ray, all stages.

    python tests/cluster_worker.py WORK    (WORK holds images/ and model.pt; results.json is written there)

The test process checks what this leaves on disk against the single-machine oracles (embed_paths, one
in-memory IVF add, find_pairs), which need no Ray.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from siamsearch.cluster import shards
from siamsearch.cluster.building import build_cluster_index
from siamsearch.cluster.cells import dedup_cells
from siamsearch.cluster.embedding import ModelLoader, embed_collection
from siamsearch.cluster.runtime import connect

SHARD_SIZE, BATCH = 7, 4  # images: several shards, several batches each
INDEX_N, INDEX_DIM, INDEX_SHARDS = 20_000, 16, 4
DEDUP_N, DEDUP_DIM, DEDUP_SHARDS, MARGIN = 200_000, 8, 4, 0.05
KILLED_SHARD = 1  # the shard a second run finds unfinished, as after a driver killed mid-job
UNREACHABLE = "127.0.0.1:1"  # nothing listens there in the namespace: the test's RAY_ADDRESS, and an --address


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (a cluster per 1,000) with groups of 2-4 near copies (noise 0.005-0.03) planted."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n // 1000, dim)))
    x = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.standard_normal((n, dim))
    x = unit(x)
    sizes = rng.integers(2, 5, n // 100)
    for members in np.split(rng.permutation(n)[:sizes.sum()], np.cumsum(sizes)[:-1]):
        noise = rng.standard_normal((len(members) - 1, dim))
        noise *= rng.uniform(0.005, 0.03, (len(members) - 1, 1)) / np.linalg.norm(noise, axis=1, keepdims=True)
        x[members[1:]] = unit(x[members[0]] + noise)
    return x


def synthetic_ids(n: int, shards_: int) -> np.ndarray:
    """The ids shards.write_embeddings gives n vectors cut into shards_ contiguous slices."""
    bounds = np.linspace(0, n, shards_ + 1).astype(int)
    return np.concatenate([shards.make_ids(s, np.arange(hi - lo)) for s, (lo, hi) in enumerate(zip(bounds[:-1],
                                                                                                  bounds[1:]))])


class Dies(torch.nn.Module):
    """An encoder whose worker process dies at its second batch, once (marker file): a killed Ray worker."""

    def __init__(self, inner: torch.nn.Module, marker: Path) -> None:
        super().__init__()
        self.inner, self.cfg, self.marker, self.calls = inner, inner.cfg, marker, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2 and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return self.inner(x)


@dataclass(frozen=True)
class DyingLoader(ModelLoader):
    """ModelLoader whose encoder kills its actor once."""

    marker: str = ""

    def __call__(self):
        model, pre, device = super().__call__()
        return Dies(model, Path(self.marker)), pre, device


class Interrupted(Exception):
    """The driver of a build stopped, as if killed."""


def interrupted_build(folder: Path, out: Path) -> int:
    """build_cluster_index stopped once every block is written, before the merge (a driver killed there).

    Returns:
        the blocks it built (0 when it built none: then it was not stopped, and finished).
    """
    built = []

    def stop(done: int, total: int) -> None:
        built.append(done)
        if done == total:
            raise Interrupted

    try:
        build_cluster_index(folder, out, progress=stop)
    except Interrupted:
        pass
    return max(built, default=0)


def cli(*args: object) -> dict:
    """`siamsearch cluster ARGS --json` in this process: its exit code and JSON summary (or its output)."""
    from typer.testing import CliRunner

    from siamsearch.cli.app import app

    res = CliRunner().invoke(app, ["cluster", *map(str, args), "--json"])
    return {"exit_code": res.exit_code, "summary": json.loads(res.stdout) if res.exit_code == 0 else res.output}


def main(work: Path) -> None:
    connect(num_cpus=2, object_store_memory=300 * 2**20)  # a local Ray of its own, RAY_ADDRESS notwithstanding
    results = {"ray": {"joined": ray.get_runtime_context().gcs_address, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS")}}
    emb, model = work / "embeddings", work / "model.pt"
    first = embed_collection(work / "images", emb, model, shard_size=SHARD_SIZE, batch_size=BATCH,
                             load=DyingLoader(str(model), "cpu", str(work / "killed")))
    manifest = shards.read_manifest(emb)
    manifest["finished"].pop(str(KILLED_SHARD))  # as if the driver had died before this shard was done
    shards.write_manifest(emb, manifest)
    second = embed_collection(work / "images", emb, model, batch_size=BATCH, device="cpu")
    third = embed_collection(work / "images", emb, model, batch_size=BATCH, device="cpu")
    results["embed"] = [r.to_dict() for r in (first, second, third)]
    results["image_index"] = build_cluster_index(emb, work / "image_index").to_dict()
    results["cli"] = {name: cli(*args) for name, args in (  # the sub-app on the Ray this process joined
        ("embed", ("embed", work / "images", "--model", model, "--out", emb)),
        ("index", ("index", emb, "--index", work / "cli_index")),
        ("dedup", ("dedup", emb, "--out", work / "cli_dedup", "--margin", 0.5, "--probe", 1)),
        # a second dedup into the same --out, with fewer cells (so fewer pair parts) and a narrower margin
        ("wide", ("dedup", emb, "--out", work / "redo", "--margin", 2, "--cells", 4)),
        ("narrow", ("dedup", emb, "--out", work / "redo", "--margin", 1e-4, "--cells", 1)),
        ("fresh", ("dedup", emb, "--out", work / "fresh", "--margin", 1e-4, "--cells", 1)),
        ("index_again", ("index", emb, "--index", work / "image_index")))}

    shards.write_embeddings(work / "vectors", unit(np.random.default_rng(1).standard_normal((INDEX_N, INDEX_DIM))),
                            INDEX_SHARDS)
    interrupted_build(emb, work / "index")  # another collection's build left its quantizer and blocks there ...
    results["interrupted_blocks"] = interrupted_build(work / "vectors", work / "index")  # ... then this one's stopped
    results["index"] = build_cluster_index(work / "vectors", work / "index").to_dict()

    shards.write_embeddings(work / "planted", planted(DEDUP_N, DEDUP_DIM), DEDUP_SHARDS)
    results["exact"] = dedup_cells(work / "planted", work / "exact", MARGIN).to_dict()
    results["approximate"] = dedup_cells(work / "planted", work / "approximate", MARGIN, probe=1).to_dict()
    results["refused"] = {name: cli(*args) for name, args in (  # last: the code before the refusals destroyed emb
        ("dedup_other_embeddings", ("dedup", work / "vectors", "--out", work / "redo", "--margin", 0.1)),
        ("dedup_into_embeddings", ("dedup", emb, "--out", emb, "--margin", 0.1)),
        ("index_into_embeddings", ("index", emb, "--index", emb)),
        ("index_into_pairs", ("index", emb, "--index", work / "redo")))}
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
