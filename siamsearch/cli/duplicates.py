"""`siamsearch dedup` and `undo`: groups from the stored vectors, moved aside and back."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.calibration import FALSE_PAIRS_PER_1000
from ..commands import decide, dedup_index, forget_decisions
from ..duplicates.crowds import CROWD
from ..duplicates.decisions import listed
from ..duplicates.moves import undo_folders, undo_moves
from .options import IndexDir, Json
from .terminal import (console, err, note_skipped, print_decisions, print_dedup, print_json, print_moves, progress_bar,
                       shown)
from .app import app


@app.command()
def dedup(
    index_dir: IndexDir,
    margin: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help=(
        "Duplicate distance (default: the largest at which the model's calibration expects at most --false-pairs "
        "wrong pairs per 1,000 images of this index)."))] = None,
    false_pairs: Annotated[float, typer.Option(min=0.0, help="Wrong pairs per 1,000 images the default margin "
                                                             "may expect.")] = FALSE_PAIRS_PER_1000,
    review_margin: Annotated[Optional[float], typer.Option(help="Wider 'review' band; groups are formed with it.")] = None,
    linkage: Annotated[str, typer.Option(help="kept (complete, then a file in no group joins the nearest kept "
                                              "file within the review margin), complete (all members within it "
                                              "of each other) or single (pairs chain; beyond --margin: review).")
                       ] = "kept",
    keep: Annotated[str, typer.Option(help="File a group keeps: largest, smallest, newest, oldest or first.")] = "largest",
    crowd: Annotated[int, typer.Option(min=0, help="A file with this many look-alikes within the margin is in a crowd: "
                                                   "its duplicates must stand out of it (0: off).")] = CROWD,
    overlap: Annotated[bool, typer.Option(help="Read the pictures of each pair within the margin: a pair where "
                                               "neither lies inside the other (shots a step aside), or too plain "
                                               "to tell, is for review, not duplicates.")] = True,
    against: Annotated[Optional[Path], typer.Option(help="Another index: this one's images with a duplicate there.")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move duplicates (not review) here, keeping relative paths.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really move; without it --move-to is a dry run.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write one row per file here.")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="--html shows only the N biggest groups.")] = None,
    identical_only: Annotated[bool, typer.Option(help="Only byte-identical files, by the content hashes the index "
                                                      "stores: no model, no vectors.")] = False,
    ignore_decisions: Annotated[bool, typer.Option(help="The raw answer: leave out the decisions recorded with "
                                                        "`siamsearch decisions`.")] = False,
    as_json: Json = False,
) -> None:
    """Duplicate and same-identity groups from the stored embeddings (nothing is embedded again)."""
    with progress_bar("searching") as progress:
        run = dedup_index(index_dir, margin=margin, review_margin=review_margin, linkage=linkage, keep=keep,
                          against=against, move_to=move_to, yes=yes, csv_file=csv_file, html_file=html_file,
                          false_pairs_per_1000=false_pairs, identical_only=identical_only, html_limit=limit,
                          ignore_decisions=ignore_decisions, progress=progress, crowd=crowd,
                          check_overlap=overlap)
    print_json(run.to_dict()) if as_json else print_dedup(run)
    if run.decisions_applied:
        err.print(f"applied {run.decisions_applied} recorded decision(s); --ignore-decisions shows the raw answer")
    for written in run.written:
        err.print(f"wrote {shown(written)}")
    if run.plan is not None:
        print_moves(run.plan, run.moved, err if as_json else console)
    if run.moved is not None:
        note_skipped(len(run.moved.skipped))


@app.command()
def undo(manifest: Annotated[Path, typer.Argument(help="Manifest written by dedup --move-to --yes.")],
         root: Annotated[Optional[Path], typer.Option(help="The folder the files go back into: needed for a "
                                                         "manifest that names no index.")] = None,
         as_json: Json = False) -> None:
    """Move files back where dedup --move-to took them from; never overwrites, checks each file's hash."""
    back_to, dest = undo_folders(manifest, root)
    (err if as_json else console).print(f"putting files back from {shown(dest)} into {shown(back_to)}")
    done = undo_moves(manifest, root)
    note_skipped(len(done.skipped))
    if as_json:
        return print_json(done.to_dict())
    for skip in done.skipped:
        err.print(f"  skipped {shown(skip.path)}: {skip.reason}")
    back = f", {len(done.already)} already back" if done.already else ""
    console.print(f"restored {len(done.done)} file(s){back}, skipped {len(done.skipped)}")


@app.command()
def decisions(
    index_dir: IndexDir,
    keep: Annotated[Optional[list[Path]], typer.Option(help="Keep this file in its group whatever --keep says "
                                                             "(repeatable).")] = None,
    not_duplicates: Annotated[Optional[list[Path]], typer.Option(help="These files (two or more: repeat it) are not "
                                                                       "duplicates of each other.")] = None,
    duplicate: Annotated[Optional[list[Path]], typer.Option(help="Confirm this file as a duplicate, also from the "
                                                                  "review band (repeatable).")] = None,
    forget: Annotated[Optional[list[Path]], typer.Option(help="Remove the decisions about this file (repeatable).")
                      ] = None,
    forget_all: Annotated[bool, typer.Option(help="Remove every decision of the index.")] = False,
    as_json: Json = False,
) -> None:
    """Decisions about duplicates that every later dedup remembers: record, list or forget them (files followed
    by content)."""
    for kind, paths in (("keep", keep), ("not-duplicates", not_duplicates), ("duplicate", duplicate)):
        if paths:
            err.print(f"recorded {decide(index_dir, kind, paths)} {kind} decision(s)")
    if forget or forget_all:
        err.print(f"forgot {forget_decisions(index_dir, None if forget_all else forget)} decision(s)")
    print_decisions(listed(index_dir), as_json)


@app.command()
def review(
    index_dir: IndexDir,
    margin: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help="Duplicate distance (default: as "
                                                                              "dedup chooses it).")] = None,
    review_margin: Annotated[Optional[float], typer.Option(help="Wider 'review' band shown with each group.")] = None,
    keep: Annotated[str, typer.Option(help="File a group keeps unless you decide: largest, smallest, newest, oldest "
                                           "or first.")] = "largest",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")] = 0,
    browser: Annotated[bool, typer.Option(help="Open the page in the browser.")] = True,
) -> None:
    """A local page to look at each group, decide (remembered by the index), move and undo."""
    from ..review import Review, serve

    err.print("finding the groups…")  # before the page opens, so it opens at once
    server = serve(Review(Path(index_dir), margin, review_margin, keep=keep), port)
    console.print(f"review page: {server.url}\n(only this machine can open it; Ctrl-C stops it, as does an idle hour)")
    if browser:
        webbrowser.open(server.url)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()
