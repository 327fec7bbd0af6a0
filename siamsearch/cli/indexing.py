"""`siamsearch index`, `relocate`, `query` and `info`: a folder into an index, and its neighbours."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..commands import index_info, query_index, query_paths
from ..core.config import Runtime, with_overrides
from ..core.images import Selection
from ..index.indexing import index_folder
from .options import Amp, DecodeWorkers, Device, Exclude, Include, IndexDir, Json
from ..index.relocation import relocate as relocate_index
from .terminal import console, err, note_skipped, print_json, print_neighbours, progress_bar, report_failures, shown
from .app import app


@app.command()
def index(
    image_dir: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).")],
    model: Annotated[Optional[Path], typer.Option(help="Model file (a new index: the built-in near-duplicate model; "
                                                       "an existing one remembers its own).")] = None,
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Index folder (default indexes/NAME).")] = None,
    kind: Annotated[str, typer.Option(help="auto, flat, hnsw, ivf or ivfpq.")] = "auto",
    rebuild: Annotated[bool, typer.Option(help="Start over: embed every file again.")] = False,
    prune: Annotated[bool, typer.Option(help="Drop the rows of missing files even if the folder is empty, "
                                             "partly unreadable or lost most of its files.")] = False,
    verify: Annotated[bool, typer.Option(help="Also hash files whose size and mtime are unchanged; "
                                              "re-embed those whose content changed.")] = False,
    include: Include = None,
    exclude: Exclude = None,
    batch_size: Annotated[int, typer.Option()] = Runtime.batch_size,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    amp: Amp = None,
    decode: Annotated[str, typer.Option(help="JPEG decoding: auto (on the GPU there), pil or device.")] = "auto",
    as_json: Json = False,
) -> None:
    """Embed a folder into a persistent index; a second run embeds only new and changed files."""
    target = index_dir or Path("indexes") / image_dir.resolve().name
    with progress_bar("embedding") as progress:
        store, done = index_folder(image_dir, target, model, kind=kind, rebuild=rebuild, prune=prune, verify=verify,
                                   selection=Selection.of(include, exclude), progress=progress,
                                   limited_by=progress.limited_by,
                                   runtime=with_overrides(Runtime(), locals()))  # device, workers, amp, decode...
    report_failures(done.failures)
    if as_json:
        facts = {"index": str(target), "count": len(store), "index_kind": store.kind, "approximate": store.approximate}
        return print_json(facts | done.to_dict())
    console.print(f"{shown(target)}: {len(store):,} images ({store.kind}{', approximate' if store.approximate else ''}); "
                  f"added {done.added}, updated {done.updated}, removed {done.removed}, unchanged {done.unchanged}, "
                  f"skipped {len(done.failures)}; embedded {done.embedded} in {done.seconds:.1f}s")


@app.command()
def relocate(
    index_dir: IndexDir,
    root: Annotated[Path, typer.Argument(help="Where the indexed folder is now.")],
    model: Annotated[Optional[Path], typer.Option(help="The model, if not where the index says nor beside it.")] = None,
    as_json: Json = False,
) -> None:
    """Point an index at its folder after the folder moved: checks a sample of files, embeds nothing."""
    done = relocate_index(index_dir, root, model)
    if as_json:
        return print_json(done.to_dict())
    console.print(f"{shown(index_dir)} now indexes {shown(done.root)} (was {shown(done.old_root)}): {done.matched} "
                  f"of {done.sampled} sampled files match, {done.hashed} by content; model "
                  + (shown(done.model) if done.model else "not found: pass --model to index and query"))


@app.command()
def query(
    index_dir: IndexDir,
    images: Annotated[Optional[list[Path]], typer.Argument(help="Query images or folders; - reads their paths "
                                                                "from stdin, one per line.")] = None,
    from_file: Annotated[Optional[Path], typer.Option("--from-file", help="Also query the paths listed in this "
                                                                          "file, one per line.")] = None,
    nul: Annotated[bool, typer.Option("-0", "--null", help="Listed paths are NUL-separated (find -print0).")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per query.")] = 10,
    margin: Annotated[Optional[float], typer.Option("--margin", "--max-distance", min=0.0, max=2.0,
                                                    help="Drop neighbours farther than this distance.")] = None,
    exclude_self: Annotated[bool, typer.Option(help="Drop the query itself when it is indexed.")] = False,
    model: Annotated[Optional[Path], typer.Option(help="Model file (default: the index's own).")] = None,
    as_json: Json = False,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page "
                                                                      "of the queries and neighbours.")] = None,
    sheet: Annotated[Optional[Path], typer.Option(help="Also write the same as a contact-sheet PNG.")] = None,
    device: Device = "auto",
) -> None:
    """Nearest neighbours of images in an index."""
    paths = query_paths(images or [], from_file=from_file, stdin=typer.get_binary_stream("stdin"), nul=nul)
    run = query_index(index_dir, paths, k=k, margin=margin, exclude_self=exclude_self, model=model,
                      runtime=Runtime(device=device, workers=0), html_file=html_file, sheet=sheet)
    print_json(run.to_dict()) if as_json else print_neighbours(run.results)
    for written in run.written:
        err.print(f"wrote {shown(written)}")
    for f in run.failures:
        err.print(Text("error: ", style="bold red") + f"cannot read {shown(f.path)}: {f.reason}")
    note_skipped(len(run.failures))


@app.command()
def info(index_dir: IndexDir, as_json: Json = False) -> None:
    """What an index holds: model fingerprint, kind, size, counts."""
    data = index_info(index_dir)
    if as_json:
        return print_json(data)
    table = Table("field", "value", show_header=False)
    for key in ("path", "root", "count", "identities", "index_kind", "approximate", "dim", "metric",
                "fingerprint", "model", "model_name", "include", "exclude", "created", "updated", "bytes"):
        table.add_row(key, shown(data.get(key)))
    console.print(table)
