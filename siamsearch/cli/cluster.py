"""`siamsearch cluster embed|index|dedup`: the Typer sub-app; Ray and pyarrow are imported only when a command runs.

Without the extra, each command ends in one line: pip install 'siamsearch[cluster]'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.config import Runtime
from .options import Json
from .terminal import console, print_json, progress_bar, report_failures, shown
from ..cluster.runtime import connect

app = typer.Typer(no_args_is_help=True, help="The same stages on a Ray cluster (pip install 'siamsearch[cluster]'): "
                                             "embed into Parquet shards, build an on-disk IVF index, dedup by cells.")

Address = Annotated[Optional[str], typer.Option(help="Address of a running Ray cluster (e.g. ray://head:10001 "
                                                     "or auto); default: start a local one.")]
Embeddings = Annotated[Path, typer.Argument(help="Embeddings folder written by `siamsearch cluster embed`.")]


@app.command()
def embed(
    source: Annotated[Path, typer.Argument(help="Folder of images, or a file listing image paths one per line.")],
    model: Annotated[Path, typer.Option(help="Model file.")],
    out: Annotated[Path, typer.Option(help="Embeddings folder (Parquet shards + manifest); a re-run resumes.")],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard.")] = 10_000,
    batch_size: Annotated[int, typer.Option(min=1)] = Runtime.batch_size,
    concurrency: Annotated[int, typer.Option(min=1, help="Encoder actors (one model each).")] = 1,
    gpus: Annotated[float, typer.Option(min=0, help="GPUs per encoder actor.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda, inside each actor.")] = "auto",
    address: Address = None,
    as_json: Json = False,
) -> None:
    """Embed every image into Parquet shards with Ray Data: CPU decode tasks feeding encoder actors."""
    connect(address)  # first: it says in one line when the extra is missing
    from ..cluster.embedding import embed_collection

    with progress_bar("embedding") as progress:
        run = embed_collection(source, out, model, shard_size=shard_size, batch_size=batch_size,
                               concurrency=concurrency, num_gpus=gpus, device=device, progress=progress)
    report_failures(run.failures)
    if as_json:
        return print_json(run.to_dict())
    console.print(f"{shown(out)}: {run.shards} shards ({run.skipped_shards} finished before), {run.embedded:,} "
                  f"images embedded, {len(run.failures)} skipped in {run.seconds:.1f}s")


@app.command()
def index(
    embeddings: Embeddings,
    index_dir: Annotated[Path, typer.Option("--index", help="Index folder to write; `siamsearch query` opens it.")],
    kind: Annotated[str, typer.Option(help="ivf or ivfpq (about 40 bytes a vector at 128-d).")] = "ivf",
    address: Address = None,
    as_json: Json = False,
) -> None:
    """Build one on-disk IVF index: a uniform-sample quantizer, a block per shard, merged on disk."""
    connect(address)  # first: it says in one line when the extra is missing
    from ..cluster.building import build_cluster_index

    with progress_bar("adding shards") as progress:
        run = build_cluster_index(embeddings, index_dir, kind=kind, progress=progress)
    if as_json:
        return print_json(run.to_dict())
    console.print(f"{shown(index_dir)}: {run.count:,} vectors ({run.kind}, {run.nlist} lists, nprobe "
                  f"{run.tuning.get('value')} for recall@10 {run.tuning.get('recall')}) in {run.seconds:.1f}s")


@app.command()
def dedup(
    embeddings: Embeddings,
    out: Annotated[Path, typer.Option(help="Folder for the pair shards and groups.json.")],
    margin: Annotated[float, typer.Option(min=0.0, max=2.0, help="Duplicates lie within this distance.")],
    probe: Annotated[Optional[int], typer.Option(min=1, help="Approximate: search each vector's nearest PROBE "
                                                            "cells only, and measure the pair recall.")] = None,
    cells: Annotated[Optional[int], typer.Option(min=1, help="k-means cells (default: one per 1,000 vectors).")] = None,
    linkage: Annotated[str, typer.Option(help="kept, complete or single (as in siamsearch dedup).")] = "kept",
    keep: Annotated[str, typer.Option(help="largest, smallest, newest, oldest or first.")] = "largest",
    address: Address = None,
    as_json: Json = False,
) -> None:
    """Every pair within the margin, cell by cell (exact, or approximate with --probe), then groups."""
    connect(address)  # first: it says in one line when the extra is missing
    from ..cluster.cells import dedup_cells

    with progress_bar("searching cells") as progress:
        run = dedup_cells(embeddings, out, margin, cells=cells, probe=probe, linkage=linkage, keep=keep,
                          progress=progress)
    if as_json:
        return print_json(run.to_dict())
    recall = (f", pair recall {run.pair_recall:.4f} on {run.recall_pairs:,} pairs of sampled queries"
              if run.pair_recall is not None else "")
    console.print(f"{shown(out)}: {run.pairs:,} pairs, {len(run.groups):,} groups ({run.mode}{recall}; "
                  f"{run.routing['copies_per_vector']} copies a vector) in {run.seconds:.1f}s")
