"""The `siamsearch` command line: each command validates, makes one library call and prints."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__
from .commands import EvalRun, dedup_index, evaluate_model, index_info, query_index
from .config import (
    AUGMENT_PRESETS,
    BACKBONES,
    LOSSES,
    EncoderConfig,
    Runtime,
    TrainConfig,
    from_options,
    parse_unfreeze,
)
from .dedup import CrossResult, DedupResult, calibrated_margin
from .embed import Progress as EmbedProgress
from .errors import SiamsearchError
from .evaluate import calibrate as calibrate_model
from .images import Failure
from .indexing import index_folder
from .metrics import TARGET_RECALL
from .moves import MovePlan, MoveReport, undo_moves
from .search import QueryResult
from .train import TrainResult
from .train import train as train_model

# No markup: a file named "[red]x.jpg" or "x[/]y.jpg" prints as it is. Colour comes from Text styles.
console = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def shown(value: Any) -> str:
    """A name as the user should read it: control characters (a newline in a file name) escaped, never obeyed."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


class Commands(TyperGroup):
    """Every command's user errors end here, in one line: the library raises SiamsearchError (or the OS an OSError)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SiamsearchError, OSError) as exc:
            fail(str(exc))


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Train a Siamese image encoder, index image folders, find neighbours and duplicates.")

# Options several commands share, declared once.
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DecodeWorkers = Annotated[Optional[int], typer.Option("--workers", help="Decode workers (default: cores - 1).")]
IndexDir = Annotated[Path, typer.Option("--index", help="Index folder.")]
TargetPrecision = Annotated[float, typer.Option(help="Precision the second threshold is set for.")]
Seed = Annotated[int, typer.Option()]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Amp = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (default: on CUDA only; "
                                                                    "--amp also on CPUs with native bf16).")]


def _calibration_line(cal: dict[str, Any]) -> str:
    """Dedup's default margin and the thresholds it comes from, for train and calibrate to print."""
    line = f"dedup margin {calibrated_margin(cal):.4f} (best F1 {cal['threshold_best_f1']:.4f}"
    if "threshold_at_recall" in cal:
        line += f", {cal['target_recall']:g} of same pairs within {cal['threshold_at_recall']:.4f}"
    return line + f"); {cal['threshold_at_precision']:.4f} for precision {cal['target_precision']:g}"


def fail(message: str) -> None:
    """One-line error and a non-zero exit: how every user mistake ends."""
    err.print(Text("error: ", style="bold red") + shown(message))
    raise typer.Exit(2)


def report_failures(failures: list[Failure], listed: int = 10) -> None:
    """Bad files are listed (the first few) and counted at the end of a run."""
    if not failures:
        return
    err.print(Text(f"skipped {len(failures)} unreadable file(s):", style="yellow"))
    for f in failures[:listed]:
        err.print(f"  {shown(f.path)}: {f.reason}")
    if len(failures) > listed:
        err.print(f"  … and {len(failures) - listed} more")


def _fmt(value: Any) -> str:
    """Compact table cell for a metric."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class TrainProgress:
    """Rich progress bar (images/s, ETA) and a per-epoch line: the CLI's training Observer."""

    columns = ("epoch", "loss", "roc_auc", "p_at_1", "one_shot", "threshold_best_f1", "minutes")

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                            TimeRemainingColumn(), console=err, transient=True,
                            disable=not err.is_terminal)  # a log file gets the epoch lines only
        self.task: Any = None
        self.images = 0

    def message(self, text: str) -> None:
        err.print(text, highlight=False)

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.bar.start()
        self.images, self.t0 = 0, time.perf_counter()
        self.task = self.bar.add_task("train", total=steps, epoch=epoch, loss=float("nan"), ips=0.0)

    def step(self, images: int, loss: float) -> None:
        self.images += images
        self.bar.update(self.task, advance=1, loss=loss, ips=self.images / max(1e-9, time.perf_counter() - self.t0))

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.bar.remove_task(self.task)
        self.bar.stop()
        console.print("  ".join(f"{k} {_fmt(record[k])}" for k in self.columns if k in record), highlight=False)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (best epoch).")] = Path("model.pt"),
    backbone: Annotated[str, typer.Option(help=f"One of {', '.join(BACKBONES)}.")] = "small",
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 64,
    channels: Annotated[int, typer.Option(help="1 = grayscale, 3 = RGB.")] = 3,
    dim: Annotated[int, typer.Option(help="Embedding size.")] = 128,
    pretrained: Annotated[bool, typer.Option(help="Start from torchvision's ImageNet weights (downloads).")] = False,
    standardize: Annotated[bool, typer.Option(help="Standardise each image first: blind to brightness and contrast.")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet state dict to start from.")] = None,
    loss: Annotated[str, typer.Option(help=f"One of {', '.join(LOSSES)}.")] = "contrastive",
    hinge: Annotated[Optional[float], typer.Option(help="Loss hinge: how far apart different identities are pushed "
                                                       "(default 1.0 contrastive, 0.2 triplet).")] = None,
    margin: Annotated[Optional[float], typer.Option(hidden=True, help="Old name of --hinge.")] = None,
    temperature: Annotated[float, typer.Option(help="ntxent's softmax temperature.")] = 0.1,
    epochs: Annotated[int, typer.Option()] = 20,
    max_minutes: Annotated[Optional[float], typer.Option(help="Time budget; the best epoch so far is kept.")] = None,
    ids_per_batch: Annotated[int, typer.Option("--ids-per-batch", "-P", help="Identities per batch.")] = 32,
    images_per_id: Annotated[int, typer.Option("--images-per-id", "-K", help="Images per identity.")] = 4,
    lr: Annotated[float, typer.Option()] = 1e-3,
    finetune_lr: Annotated[float, typer.Option(help="Learning rate of blocks unfrozen later.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    freeze_backbone: Annotated[bool, typer.Option(help="Train only the projection head.")] = False,
    unfreeze: Annotated[Optional[list[str]], typer.Option(help="EPOCH:BLOCK[,BLOCK] e.g. 3:layer3,layer4.")] = None,
    accumulate: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    amp: Annotated[bool, typer.Option(help="Mixed precision: bf16 (fp16 on older GPUs) on CUDA, bf16 on CPUs "
                                           "with native bf16 (AVX512-BF16/AMX).")] = False,
    self_supervised: Annotated[bool, typer.Option(help="Positives are augmented views of one image.")] = False,
    augment: Annotated[str, typer.Option(help=f"One of {', '.join(AUGMENT_PRESETS)}.")] = "faces",
    val_fraction: Annotated[float, typer.Option(help="Fraction of identities held out.")] = 0.2,
    val_group_depth: Annotated[int, typer.Option(help="Hold out whole top folders (1 = alphabets).")] = 0,
    device: Device = "auto",
    workers: Annotated[int, typer.Option(help="Decode worker processes.")] = 0,
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run saved next to --out.")] = False,
) -> None:
    """Train a Siamese encoder on an identity folder."""
    if augment not in AUGMENT_PRESETS:
        fail(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    options = locals() | {"hinge": margin if hinge is None else hinge, "augment": AUGMENT_PRESETS[augment],
                          "unfreeze": parse_unfreeze(unfreeze or [])}  # the configs pick their fields by name
    enc, cfg, runtime = (from_options(cls, options) for cls in (EncoderConfig, TrainConfig, Runtime))
    result = train_model(data_dir, out, enc, cfg, runtime, weights_file=weights, resume=resume,
                         observer=TrainProgress())
    _print_training(result)


def _print_training(result: TrainResult) -> None:
    """Skipped files, how the run ended, the best epoch, its calibration and the file written."""
    report_failures(result.failures)
    if result.stopped == "interrupted":
        err.print(f"interrupted: state saved to {shown(result.resume_path)}; continue with the same command and "
                  "--resume")
    if result.best is None:
        fail("no epoch finished, so no model was written")
    best = result.best
    console.print(f"best epoch {best['epoch']} (stopped by {result.stopped}): "
                  + "  ".join(f"{k} {_fmt(best[k])}" for k in ("roc_auc", "p_at_1", "one_shot") if k in best))
    if result.calibration:
        console.print(f"calibration: {_calibration_line(result.calibration)}")
    console.print(f"wrote {shown(result.out)} (fingerprint {result.fingerprint})")


@app.command()
def version() -> None:
    """Print the siamsearch version."""
    console.print(__version__)


@contextmanager
def _bar(label: str) -> Iterator[EmbedProgress]:
    """A transient bar with a count and ETA on stderr (so --json stays clean), fed as progress(done, total)."""
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True, disable=not err.is_terminal)
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_json(data: Any) -> None:
    """--json output: plain JSON on stdout, nothing else there."""
    print(json.dumps(data, indent=2, default=str))


@app.command()
def index(
    image_dir: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).")],
    model: Annotated[Optional[Path], typer.Option(help="Model file; an existing index remembers its own.")] = None,
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Index folder (default indexes/NAME).")] = None,
    kind: Annotated[str, typer.Option(help="auto, flat, hnsw, ivf or ivfpq.")] = "auto",
    rebuild: Annotated[bool, typer.Option(help="Start over: embed every file again.")] = False,
    batch_size: Annotated[int, typer.Option()] = 64,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    amp: Amp = None,
) -> None:
    """Embed a folder into a persistent index; a second run embeds only new and changed files."""
    target = index_dir or Path("indexes") / image_dir.resolve().name
    with _bar("embedding") as progress:
        store, done = index_folder(image_dir, target, model, kind=kind, rebuild=rebuild, progress=progress,
                                   runtime=Runtime(device=device, workers=workers, amp=amp, batch_size=batch_size))
    report_failures(done.failures)
    console.print(f"{shown(target)}: {len(store):,} images ({store.kind}{', approximate' if store.approximate else ''}); "
                  f"added {done.added}, updated {done.updated}, removed {done.removed}, "
                  f"unchanged {done.unchanged}, skipped {len(done.failures)} in {done.seconds:.1f}s")


def _print_neighbours(results: list[QueryResult]) -> None:
    """One table per query, nearest first."""
    for r in results:
        table = Table("rank", "distance", "path", "identity", title=shown(r.query), title_justify="left")
        for n in r.neighbors:
            table.add_row(str(n.rank), f"{n.distance:.4f}", shown(n.path), shown(n.identity or ""))
        console.print(table)


@app.command()
def query(
    images: Annotated[list[Path], typer.Argument(help="Query images or folders.")],
    index_dir: IndexDir,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    margin: Annotated[Optional[float], typer.Option("--margin", "--max-distance",
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
    run = query_index(index_dir, images, k=k, margin=margin, exclude_self=exclude_self, model=model,
                      runtime=Runtime(device=device, workers=0), html_file=html_file, sheet=sheet)
    _print_json(run.to_dict()) if as_json else _print_neighbours(run.results)
    for written in run.written:
        err.print(f"wrote {shown(written)}")
    for f in run.failures:
        err.print(Text("error: ", style="bold red") + f"cannot read {shown(f.path)}: {f.reason}")
    if run.failures:
        raise typer.Exit(1)


@app.command()
def info(index_dir: IndexDir, as_json: Json = False) -> None:
    """What an index holds: model fingerprint, kind, size, counts."""
    data = index_info(index_dir)
    if as_json:
        return _print_json(data)
    table = Table("field", "value", show_header=False)
    for key in ("path", "root", "count", "identities", "index_kind", "approximate", "dim", "metric",
                "fingerprint", "model", "created", "updated", "bytes"):
        table.add_row(key, shown(data.get(key)))
    console.print(table)


def _dedup_table(result: DedupResult | CrossResult) -> Table:
    """Groups (kept file first, with the group's largest inner distance) or cross pairs, one row per file."""
    if isinstance(result, CrossResult):
        table = Table("path", "duplicate in the other index", "distance", "status",
                      title=f"{len(result.pairs)} pair(s)", title_justify="left")
        for p in result.pairs:
            table.add_row(shown(p.path), shown(p.other_path), f"{p.distance:.4f}", p.status)
        return table
    members = [m for g in result.groups for m in g.members]
    review = sum(m.status == "review" for m in members)
    table = Table("group", "path", "distance", "status", title=f"{len(result.groups)} group(s): "
                  f"{len(members) - review} duplicate(s), {review} to review", title_justify="left")
    for n, g in enumerate(result.groups, start=1):
        table.add_row(str(n), shown(g.keep.path), "", f"keep (max distance {g.max_distance:.4f})")
        for m in g.members:
            table.add_row("", shown(m.path), f"{m.distance:.4f}", m.status)
    for p in result.links:  # duplicates the groups do not show: never hidden
        table.add_row("link", f"{shown(p.path)} ~ {shown(p.other_path)}", f"{p.distance:.4f}",
                      "duplicate, across groups")
    return table


def _print_moves(plan: MovePlan, moved: MoveReport | None, out: Console) -> None:
    """A dry run lists what would move; a real one says how to undo it. Skipped files come with a reason."""
    if moved is None:
        out.print(f"dry run: would move {len(plan.moves)} duplicate(s) to {shown(plan.dest)} (add --yes to move them)")
        for move in plan.moves:
            out.print(f"  {shown(move.path)}")
    else:
        out.print(f"moved {len(moved.done)} duplicate(s) to {shown(plan.dest)}; undo with: siamsearch undo "
                  f"{shown(moved.manifest)}")
    for skip in plan.skipped if moved is None else moved.skipped:
        out.print(f"  skipped {shown(skip.path)}: {skip.reason}")


@app.command()
def dedup(
    index_dir: IndexDir,
    margin: Annotated[Optional[float], typer.Option(help="Duplicate distance (default: the model's calibrated "
                                                         "margin).")] = None,
    review_margin: Annotated[Optional[float], typer.Option(help="Wider distance for a 'review' band; groups "
                                                                "are formed with it.")] = None,
    linkage: Annotated[str, typer.Option(help="complete (all members within the review margin of each other) "
                                              "or single (pairs chain: members chained beyond --margin show "
                                              "as review).")] = "complete",
    keep: Annotated[str, typer.Option(help="File a group keeps: largest, smallest, newest, oldest or first.")] = "largest",
    against: Annotated[Optional[Path], typer.Option(help="Another index: images of this one with a duplicate "
                                                         "there.")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move duplicates (not review) here, keeping relative "
                                                         "paths.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really move; without it --move-to is a dry run.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write one row per file here.")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page of "
                                                                      "the groups.")] = None,
    as_json: Json = False,
) -> None:
    """Duplicate and same-identity groups from the stored embeddings (nothing is embedded again)."""
    run = dedup_index(index_dir, margin=margin, review_margin=review_margin, linkage=linkage, keep=keep,
                      against=against, move_to=move_to, yes=yes, csv_file=csv_file, html_file=html_file)
    if as_json:
        _print_json(run.to_dict())
    else:
        console.print(_dedup_table(run.result))
        console.print(f"margin {run.result.margin:.4f}, review margin {run.result.review_margin:.4f}"
                      + ("; approximate index: a few duplicates may be missed" if run.result.approximate else ""))
    for written in run.written:
        err.print(f"wrote {shown(written)}")
    if run.plan is not None:
        _print_moves(run.plan, run.moved, err if as_json else console)


@app.command()
def undo(manifest: Annotated[Path, typer.Argument(help="Manifest written by dedup --move-to --yes.")]) -> None:
    """Move files back where dedup --move-to took them from; never overwrites, checks each file's hash."""
    done = undo_moves(manifest)
    for skip in done.skipped:
        err.print(f"  skipped {shown(skip.path)}: {skip.reason}")
    console.print(f"restored {len(done.done)} file(s), skipped {len(done.skipped)}")
    if done.skipped:
        raise typer.Exit(1)


# (title, metric keys) of the eval table, in the order a reader wants them
EVAL_SECTIONS = (
    ("retrieval", ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r")),
    ("verification", ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "pairs")),
    ("one-shot", ("one_shot", "ways", "episodes")),
    ("thresholds", ("threshold_best_f1", "best_f1", "threshold_at_precision", "target_precision",
                    "precision_at_threshold", "recall_at_threshold", "threshold_at_recall", "target_recall")),
)


def _print_eval(run: EvalRun) -> None:
    """The metrics table by section, the notes, the plots written."""
    result = run.result
    table = Table("metric", "value", title=f"{shown(result.root)}: {result.counts['images']:,} images, "
                  f"{result.counts['identities']:,} identities", title_justify="left")
    for section, keys in EVAL_SECTIONS:
        table.add_section()
        for key in (k for k in keys if k in result.metrics):
            value = result.metrics[key]
            table.add_row(f"{section}: {key}", str(int(value)) if value.is_integer() and value > 1 else _fmt(value))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    for path in run.plots:
        console.print(f"wrote {shown(path)}")


@app.command("eval")
def eval_(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities.")],
    model: Annotated[Path, typer.Option(help="Model file.")],
    held_out: Annotated[bool, typer.Option(help="Only the identities training held out (DATA_DIR = the "
                                                "training folder).")] = False,
    ways: Annotated[int, typer.Option(help="Identities per one-shot episode.")] = 20,
    episodes: Annotated[int, typer.Option(help="Seeded one-shot episodes.")] = 400,
    target_precision: TargetPrecision = 0.99,
    seed: Seed = 0,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Write ROC, distance and training "
                                                                         "plots (PNG) here.")] = None,
    as_json: Json = False,
    workers: DecodeWorkers = None,
    device: Device = "auto",
) -> None:
    """Retrieval, verification and one-shot metrics of a model on a labelled folder."""
    with _bar("embedding") as progress:
        run = evaluate_model(data_dir, model, report_dir=report_dir, held_out=held_out, ways=ways, episodes=episodes,
                             target_precision=target_precision, seed=seed, device=device, workers=workers,
                             progress=progress)
    report_failures(run.result.failures)
    _print_json(run.to_dict()) if as_json else _print_eval(run)


@app.command()
def calibrate(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities (your own data).")],
    model: Annotated[Path, typer.Option(help="Model file; its thresholds are replaced, its weights kept.")],
    target_precision: TargetPrecision = 0.99,
    target_recall: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of same pairs the recall threshold holds; dedup's default margin is at most "
                               "that distance.")] = TARGET_RECALL,
    seed: Seed = 0,
    workers: DecodeWorkers = None,
    device: Device = "auto",
) -> None:
    """Fit the duplicate thresholds to your labelled data and store them in the model (dedup's default)."""
    with _bar("embedding") as progress:
        found = calibrate_model(data_dir, model, target_precision=target_precision, target_recall=target_recall,
                                seed=seed, device=device, workers=workers, progress=progress)
    console.print(f"{_calibration_line(found)}; precision {found['precision_at_threshold']:.4f} there, recall "
                  f"{found['recall_at_threshold']:.4f}; from {found['pairs']:,} pairs")
    console.print(f"stored in {shown(model)}; the weights and fingerprint are unchanged, so its indexes stay valid")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, models and reports.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time for both encoders together.")] = 2.0,
    device: Device = "auto",
) -> None:
    """The whole product on built-in data: train, evaluate, index, query, dedup, reports."""
    from .demo import run_demo  # needs the demo extra (scikit-learn, scikit-image, matplotlib)

    s = run_demo(out, minutes, observer=TrainProgress(), device=device)
    console.print(f"demo finished in {s.minutes:.1f} min")
    console.print("digits model, held-out images: " + "  ".join(
        f"{k} {_fmt(s.eval_metrics[k])}" for k in ("precision_at_1", "map_at_r", "roc_auc", "one_shot")
        if k in s.eval_metrics) + f"  query neighbour accuracy {s.query_accuracy:.3f}")
    console.print("dedup of planted photo copies: " + "  ".join(f"{k} {v}" for k, v in s.dedup.items()))
    for note in s.notes:
        console.print(f"note: {note}")
    for name, path in s.files.items():
        console.print(f"{name}: {shown(path)}")
