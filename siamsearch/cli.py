"""The `siamsearch` command line: each command validates, makes one library call and prints."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, report
from .checkpoint import CheckpointError, load_checkpoint
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
from .dedup import CrossResult, DedupResult, calibrated_margin, default_margin, find_duplicates, find_duplicates_in
from .evaluate import EvalResult, evaluate
from .evaluate import calibrate as calibrate_model
from .images import Failure
from .metrics import TARGET_RECALL
from .moves import MovePlan, MoveReport, apply_moves, plan_moves, undo_moves
from .search import EmbedOptions, Searcher, index_folder
from .store import Store, StoreError
from .train import train as train_model

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train a Siamese image encoder, index image folders, find neighbours and duplicates.")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Options several commands share, declared once.
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DecodeWorkers = Annotated[Optional[int], typer.Option("--workers", help="Decode workers (default: cores - 1).")]
IndexDir = Annotated[Path, typer.Option("--index", help="Index folder.")]
TargetPrecision = Annotated[float, typer.Option(help="Precision the second threshold is set for.")]
Seed = Annotated[int, typer.Option()]


def _calibration_line(cal: dict[str, Any]) -> str:
    """Dedup's default margin and the thresholds it comes from, for train and calibrate to print."""
    line = f"dedup margin {calibrated_margin(cal):.4f} (best F1 {cal['threshold_best_f1']:.4f}"
    if "threshold_at_recall" in cal:
        line += f", {cal['target_recall']:g} of same pairs within {cal['threshold_at_recall']:.4f}"
    return line + f"); {cal['threshold_at_precision']:.4f} for precision {cal['target_precision']:g}"


def fail(message: str) -> None:
    """One-line error and a non-zero exit: how every user mistake ends."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def report_failures(failures: list[Failure], shown: int = 10) -> None:
    """Bad files are listed (the first few) and counted at the end of a run."""
    if not failures:
        return
    err.print(f"[yellow]skipped {len(failures)} unreadable file(s):[/]")
    for f in failures[:shown]:
        err.print(f"  {f.path}: {f.reason}", highlight=False)
    if len(failures) > shown:
        err.print(f"  … and {len(failures) - shown} more")


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
    options = locals() | {"hinge": margin if hinge is None else hinge}  # the configs pick their fields by name
    if augment not in AUGMENT_PRESETS:
        fail(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    if not data_dir.is_dir():
        fail(f"no such folder: {data_dir}")
    try:
        options |= {"augment": AUGMENT_PRESETS[augment], "unfreeze": parse_unfreeze(unfreeze or [])}
        enc, cfg, runtime = (from_options(cls, options) for cls in (EncoderConfig, TrainConfig, Runtime))
        result = train_model(data_dir, out, enc, cfg, runtime, weights_file=weights, resume=resume,
                             observer=TrainProgress())
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    report_failures(result.failures)
    if result.stopped == "interrupted":
        err.print(f"interrupted: state saved to {result.resume_path}; continue with the same command and --resume")
    if result.best is None:
        fail("no epoch finished, so no model was written")
    best = result.best
    console.print(f"best epoch {best['epoch']} (stopped by {result.stopped}): "
                  + "  ".join(f"{k} {_fmt(best[k])}" for k in ("roc_auc", "p_at_1", "one_shot") if k in best))
    if result.calibration:
        console.print(f"calibration: {_calibration_line(result.calibration)}", highlight=False)
    console.print(f"wrote {out} (fingerprint {result.fingerprint})")


@app.command()
def version() -> None:
    """Print the siamsearch version."""
    console.print(__version__)


def _store_errors() -> tuple[type[Exception], ...]:
    """Errors that end a command with one line rather than a traceback."""
    return (ValueError, FileNotFoundError, CheckpointError, StoreError)


def _progress_bar(label: str) -> Progress:
    """A transient bar with a count and ETA, on stderr so --json stays clean."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


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
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (default: on CUDA only; "
                                                                        "--amp also on CPUs with native bf16).")] = None,
) -> None:
    """Embed a folder into a persistent index; a second run embeds only new and changed files."""
    target = index_dir or Path("indexes") / image_dir.resolve().name
    bar = _progress_bar("embedding")
    task = bar.add_task("embed", total=None)
    try:
        with bar:
            store, report = index_folder(image_dir, target, model, kind=kind, rebuild=rebuild,
                                         opts=EmbedOptions(batch_size, workers, device, amp),
                                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    except _store_errors() as exc:
        fail(str(exc))
    report_failures(report.failures)
    console.print(f"{target}: {len(store):,} images ({store.kind}{', approximate' if store.approximate else ''}); "
                  f"added {report.added}, updated {report.updated}, removed {report.removed}, "
                  f"unchanged {report.unchanged}, skipped {len(report.failures)} in {report.seconds:.1f}s")


@app.command()
def query(
    images: Annotated[list[Path], typer.Argument(help="Query images or folders.")],
    index_dir: IndexDir,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    max_distance: Annotated[Optional[float], typer.Option(help="Drop neighbours farther than this.")] = None,
    exclude_self: Annotated[bool, typer.Option(help="Drop the query itself when it is indexed.")] = False,
    model: Annotated[Optional[Path], typer.Option(help="Model file (default: the index's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page "
                                                                      "of the queries and neighbours.")] = None,
    sheet: Annotated[Optional[Path], typer.Option(help="Also write the same as a contact-sheet PNG.")] = None,
    device: Device = "auto",
) -> None:
    """Nearest neighbours of images in an index."""
    try:
        searcher = Searcher.open(index_dir, model, EmbedOptions(device=device, workers=0))
        with searcher.store:
            results, failures = searcher.query_images(images, k, max_distance, exclude_self)
        if html_file is not None:
            report.query_page(results, searcher.store.root, html_file)
        if sheet is not None and results:
            report.contact_sheet(results, searcher.store.root, sheet)
    except (*_store_errors(), OSError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([{"query": str(r.query), "neighbors": [
            {"rank": n.rank, "path": n.path, "distance": round(n.distance, 6), "identity": n.identity} for n in r.neighbors]}
            for r in results], indent=2))
    else:
        for r in results:
            table = Table("rank", "distance", "path", "identity", title=str(r.query), title_justify="left")
            for n in r.neighbors:
                table.add_row(str(n.rank), f"{n.distance:.4f}", n.path, n.identity or "")
            console.print(table)
    for written in (html_file, sheet if results else None):
        if written is not None:
            err.print(f"wrote {written}", highlight=False)
    for f in failures:
        err.print(f"[bold red]error:[/] cannot read {f.path}: {f.reason}", highlight=False)
    if failures:
        raise typer.Exit(1)


@app.command()
def info(
    index_dir: IndexDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What an index holds: model fingerprint, kind, size, counts."""
    try:
        with Store.open(index_dir) as store:
            data = store.info()
            identities = len({r.identity for r in store.iter_rows() if r.identity})
    except _store_errors() as exc:
        fail(str(exc))
    data["identities"] = identities
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    table = Table("field", "value", show_header=False)
    for key in ("path", "root", "count", "identities", "index_kind", "approximate", "dim", "metric",
                "fingerprint", "model", "created", "updated", "bytes"):
        table.add_row(key, str(data.get(key)))
    console.print(table)


def _dedup_table(result: DedupResult | CrossResult) -> Table:
    """Groups (kept file first, with the group's largest inner distance) or cross pairs, one row per file."""
    if isinstance(result, CrossResult):
        table = Table("path", "duplicate in the other index", "distance", "status",
                      title=f"{len(result.pairs)} pair(s)", title_justify="left")
        for p in result.pairs:
            table.add_row(p.path, p.other_path, f"{p.distance:.4f}", p.status)
        return table
    members = [m for g in result.groups for m in g.members]
    review = sum(m.status == "review" for m in members)
    table = Table("group", "path", "distance", "status", title=f"{len(result.groups)} group(s): "
                  f"{len(members) - review} duplicate(s), {review} to review", title_justify="left")
    for n, g in enumerate(result.groups, start=1):
        table.add_row(str(n), g.keep.path, "", f"keep (max distance {g.max_distance:.4f})")
        for m in g.members:
            table.add_row("", m.path, f"{m.distance:.4f}", m.status)
    return table


def _write_csv(path: Path, result: DedupResult | CrossResult) -> None:
    """One row per group member or cross pair, with a header even when there are none."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=result.FIELDS)
        writer.writeheader()
        writer.writerows(result.records())


def _print_moves(plan: MovePlan, report: MoveReport | None, out: Console) -> None:
    """A dry run lists what would move; a real one says how to undo it. Skipped files come with a reason."""
    if report is None:
        out.print(f"dry run: would move {len(plan.moves)} duplicate(s) to {plan.dest} (add --yes to move them)",
                  highlight=False)
        for move in plan.moves:
            out.print(f"  {move.path}", highlight=False)
    else:
        out.print(f"moved {len(report.done)} duplicate(s) to {plan.dest}; undo with: siamsearch undo "
                  f"{report.manifest}", highlight=False)
    for skip in plan.skipped if report is None else report.skipped:
        out.print(f"  skipped {skip.path}: {skip.reason}", highlight=False)


@app.command()
def dedup(
    index_dir: IndexDir,
    margin: Annotated[Optional[float], typer.Option(help="Duplicate distance (default: the model's calibrated "
                                                         "best-F1 distance).")] = None,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Duplicate and same-identity groups from the stored embeddings (nothing is embedded again)."""
    if against is not None and move_to is not None:
        fail("--move-to works within one index; it does not combine with --against")
    if against is not None and html_file is not None:
        fail("--html shows the groups of one index; with --against use --json or --csv")
    try:
        with Store.open(index_dir) as store:
            chosen = default_margin(store) if margin is None else margin
            if against is None:
                result = find_duplicates(store, chosen, review_margin, linkage, keep)
            else:
                with Store.open(against) as other:
                    result = find_duplicates_in(store, other, chosen, review_margin)
        plan = plan_moves(result, move_to) if move_to is not None else None
        moved = apply_moves(plan) if plan is not None and yes else None
        if csv_file is not None:
            _write_csv(csv_file, result)
        if html_file is not None:
            report.dedup_page(result.to_dict()["groups"], html_file, root=result.root)
    except (*_store_errors(), OSError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(_dedup_table(result))
        console.print(f"margin {result.margin:.4f}, review margin {result.review_margin:.4f}"
                      + ("; approximate index: a few duplicates may be missed" if result.approximate else ""))
    if plan is not None:
        _print_moves(plan, moved, err if as_json else console)


@app.command()
def undo(manifest: Annotated[Path, typer.Argument(help="Manifest written by dedup --move-to --yes.")]) -> None:
    """Move files back where dedup --move-to took them from; never overwrites, checks each file's hash."""
    try:
        report = undo_moves(manifest)
    except (*_store_errors(), OSError) as exc:
        fail(str(exc))
    for skip in report.skipped:
        err.print(f"  skipped {skip.path}: {skip.reason}", highlight=False)
    console.print(f"restored {len(report.done)} file(s), skipped {len(report.skipped)}")
    if report.skipped:
        raise typer.Exit(1)


def _embedding(call: Callable[[Callable[[int], None]], Any]) -> Any:
    """Run call(progress) under an embedding bar (progress is told each batch's size); errors end in one line."""
    bar = _progress_bar("embedding")
    task = bar.add_task("embedding", total=None)
    try:
        with bar:
            return call(lambda n: bar.advance(task, n))
    except (*_store_errors(), OSError) as exc:
        fail(str(exc))


# (title, metric keys) of the eval table, in the order a reader wants them
EVAL_SECTIONS = (
    ("retrieval", ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r")),
    ("verification", ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "pairs")),
    ("one-shot", ("one_shot", "ways", "episodes")),
    ("thresholds", ("threshold_best_f1", "best_f1", "threshold_at_precision", "target_precision",
                    "precision_at_threshold", "recall_at_threshold", "threshold_at_recall", "target_recall")),
)


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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    workers: DecodeWorkers = None,
    device: Device = "auto",
) -> None:
    """Retrieval, verification and one-shot metrics of a model on a labelled folder."""
    result: EvalResult = _embedding(lambda progress: evaluate(
        data_dir, model, held_out=held_out, ways=ways, episodes=episodes, target_precision=target_precision,
        seed=seed, device=device, workers=workers, progress=progress))
    try:
        plots = report.write_eval_report(result, load_checkpoint(model), report_dir) if report_dir else []
    except (ImportError, OSError) as exc:
        fail(str(exc))
    report_failures(result.failures)
    if as_json:
        print(json.dumps(result.to_dict() | {"plots": [str(p) for p in plots]}, indent=2))
        return
    table = Table("metric", "value", title=f"{result.root}: {result.counts['images']:,} images, "
                  f"{result.counts['identities']:,} identities", title_justify="left")
    for section, keys in EVAL_SECTIONS:
        table.add_section()
        for key in keys:
            if key in result.metrics:
                value = result.metrics[key]
                table.add_row(f"{section}: {key}", str(int(value)) if value.is_integer() and value > 1 else _fmt(value))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    for path in plots:
        console.print(f"wrote {path}", highlight=False)


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
    found = _embedding(lambda progress: calibrate_model(
        data_dir, model, target_precision=target_precision, target_recall=target_recall, seed=seed, device=device,
        workers=workers, progress=progress))
    console.print(f"{_calibration_line(found)}; precision {found['precision_at_threshold']:.4f} there, recall "
                  f"{found['recall_at_threshold']:.4f}; from {found['pairs']:,} pairs", highlight=False)
    console.print(f"stored in {model}; the weights and fingerprint are unchanged, so its indexes stay valid")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, models and reports.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time for both encoders together.")] = 2.0,
    device: Device = "auto",
) -> None:
    """The whole product on built-in data: train, evaluate, index, query, dedup, reports."""
    from .demo import run_demo  # needs the demo extra (scikit-learn, scikit-image, matplotlib)

    try:
        s = run_demo(out, minutes, observer=TrainProgress(), device=device)
    except (ValueError, FileNotFoundError, CheckpointError, StoreError) as exc:
        fail(str(exc))
    console.print(f"demo finished in {s.minutes:.1f} min")
    console.print("digits model, held-out images: " + "  ".join(
        f"{k} {_fmt(s.eval_metrics[k])}" for k in ("precision_at_1", "map_at_r", "roc_auc", "one_shot")
        if k in s.eval_metrics) + f"  query neighbour accuracy {s.query_accuracy:.3f}")
    console.print("dedup of planted photo copies: " + "  ".join(f"{k} {v}" for k, v in s.dedup.items()))
    for note in s.notes:
        console.print(f"note: {note}")
    for name, path in s.files.items():
        console.print(f"{name}: {path}")
