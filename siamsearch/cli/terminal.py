"""What the CLI shows: tables, progress bars, training progress; every name escaped, never obeyed.

Output goes to two consoles without markup, so a file called "[red]x.jpg" prints as it is: stdout for
results (tables or --json), stderr for bars, notes and errors, so --json stays clean.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..core.calibration import calibrated_margin, collection_margin
from ..duplicates.closepairs import MAX_NEIGHBOURS
from ..commands import DedupRun, EvalRun
from ..duplicates.crowds import CROWD, STAND_OUT
from ..duplicates.dedup import CrossResult, DedupResult, multiframe
from ..core.images import Failure
from ..duplicates.decisions import Decision
from ..duplicates.moves import MovePlan, MoveReport
from ..index.search import QueryResult
from ..training.loop import TrainResult
from ..training.recipes import RECIPES

# No markup: a file named "[red]x.jpg" or "x[/]y.jpg" prints as it is. Colour comes from Text styles.
console = Console(soft_wrap=True, markup=False, highlight=False)


err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def shown(value: Any) -> str:
    """A name as the user should read it: control characters (a newline in a file name) escaped, never obeyed."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def calibration_line(cal: dict[str, Any]) -> str:
    """The calibrated thresholds and the margins dedup will pick from them, for train and calibrate to print."""
    line = f"balanced margin {calibrated_margin(cal):.4f} (best F1 {cal['threshold_best_f1']:.4f}"
    if "threshold_at_recall" in cal:
        line += f", {cal['target_recall']:g} of same pairs within {cal['threshold_at_recall']:.4f}"
    line += f"); {cal['threshold_at_precision']:.4f} for precision {cal['target_precision']:g}"
    if cal.get("tails"):
        line += "; dedup's default margin for " + ", ".join(
            f"{n:,} images {collection_margin(cal, n).margin:.4f}" for n in (1_000, 1_000_000))
    return line


class Skipped:
    """How many files the running command skipped: any at all makes its exit code 1."""

    count = 0


def note_skipped(n: int) -> None:
    """Count files a command left out (unreadable, or not moved) for the exit code."""
    Skipped.count += n


def report_failures(failures: list[Failure], listed: int = 10) -> None:
    """Bad files are listed (the first few) and counted at the end of a run."""
    note_skipped(len(failures))
    if not failures:
        return
    err.print(Text(f"skipped {len(failures)} unreadable file(s):", style="yellow"))
    for f in failures[:listed]:
        err.print(f"  {shown(f.path)}: {f.reason}")
    if len(failures) > listed:
        err.print(f"  … and {len(failures) - listed} more")


def fmt(value: Any) -> str:
    """Compact table cell for a metric."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class TrainProgress:
    """Rich progress bar (images/s, ETA) and a per-epoch line: the CLI's training Observer."""

    columns = ("epoch", "loss", "roc_auc", "p_at_1", "one_shot", "threshold_best_f1", "minutes")

    def __init__(self, out: Console | None = None) -> None:
        self.out = out or console  # epoch lines: stdout, or stderr when stdout carries --json
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                            TimeRemainingColumn(), console=err, transient=True,
                            disable=not err.is_terminal or console.quiet)  # a log file gets the epoch lines only
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
        self.out.print("  ".join(f"{k} {fmt(record[k])}" for k in self.columns if k in record))


def print_recipes() -> None:
    """train --recipe list: each recipe's main fields and what it is for."""
    table = Table("recipe", "backbone", "input", "loss", "whitening", "budget", "for",
                  title="train --recipe NAME (auto: chosen from the folder)")
    for recipe in RECIPES.values():
        enc, cfg = recipe.encoder, recipe.train
        trunk = enc.backbone + (" (ImageNet)" if enc.pretrained else "")
        whitening = f"{enc.dim if enc.whiten_from == 'head' else 'pooled'} → {enc.whiten}" if enc.whiten else "-"
        size = (f"{enc.image_size} px" + "".join(f" and ×{scale:g}" for scale in enc.test_scales)  # test-time views
                + (" and grey" if enc.test_grey else ""))
        table.add_row(recipe.name, trunk, size, cfg.loss if cfg.epochs else "none (no SGD)", whitening,
                      recipe.budget, recipe.summary)
    console.print(table)


def print_recipe_fields(name: str, fields: dict[str, Any]) -> None:
    """train --show: every field of the recipe a run would use, the names --set and --config take."""
    table = Table("field", "value", title=f"recipe {name}: set any field with --set FIELD=VALUE", title_justify="left")
    for field, value in fields.items():
        table.add_row(field, str(value))
    console.print(table)


def print_training(result: TrainResult) -> None:
    """How the run ended, the best epoch, its calibration and the file written."""
    if result.stopped == "interrupted":
        err.print(f"interrupted: state saved to {shown(result.resume_path)}; continue with the same command and "
                  "--resume")
    best = result.best
    if best is None:
        return
    console.print(f"best epoch {best['epoch']} (stopped by {result.stopped}): "
                  + "  ".join(f"{k} {fmt(best[k])}" for k in ("roc_auc", "p_at_1", "one_shot") if k in best))
    if result.calibration:
        console.print(f"calibration: {calibration_line(result.calibration)}")
    console.print(f"wrote {shown(result.out)} (fingerprint {result.fingerprint})")


class Bar:
    """A bar's progress(done, total), and limited_by(what): shown beside its label ("embedding, encoder-bound")."""

    def __init__(self, bar: Progress, task: Any, label: str) -> None:
        self._bar, self._task, self._label = bar, task, label

    def __call__(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)

    def limited_by(self, what: str) -> None:
        self._bar.update(self._task, description=f"{self._label}, {what}-bound")


@contextmanager
def progress_bar(label: str) -> Iterator[Bar]:
    """A transient bar with a count and ETA on stderr (so --json stays clean), fed as progress(done, total)."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True, disable=not err.is_terminal or console.quiet)
    task = bar.add_task(label, total=None)
    with bar:
        yield Bar(bar, task, label)


def print_json(data: Any) -> None:
    """--json output: plain JSON on stdout, nothing else there."""
    print(json.dumps(data, indent=2, default=str))


def print_neighbours(results: list[QueryResult]) -> None:
    """One table per query, nearest first."""
    for r in results:
        table = Table("rank", "distance", "path", "identity", title=shown(r.query), title_justify="left")
        for n in r.neighbors:
            table.add_row(str(n.rank), f"{n.distance:.4f}", shown(n.path), shown(n.identity or ""))
        console.print(table)


def print_dedup(run: DedupRun) -> None:
    """The groups, then the margins and how the margin was chosen."""
    result, chosen = run.result, run.chosen
    console.print(dedup_table(result, same_identity=run.purpose == "identities"))
    if getattr(result, "unchecked", None) is not None:
        console.print("byte-identical files by content hash" + (
            f"; {result.unchecked} file(s) indexed without a hash were not checked" if result.unchecked else ""))
        return
    how = "" if chosen is None else f" ({chosen.rule}" + (
        f": {chosen.expected_false_pairs:.2g} false pair(s) expected" if chosen.expected_false_pairs is not None
        else "") + (f", {chosen.expected_recall:.0%} of calibration copies within" if chosen.expected_recall
                    is not None else "") + ")"
    held = sum(m.status == "review" and m.distance <= result.margin and (multiframe(m.row) or multiframe(g.keep))
               for g in result.groups for m in g.members)
    if held:
        console.print(f"{held} file(s) of several frames or pages held for review: a multi-frame file is embedded "
                      "by its first frame, so only its byte-identical copies are duplicates")
    if getattr(result, "crowded", 0):
        console.print(f"{result.crowded} file(s) within the margin held for review: each is in a crowd of look-alikes "
                      f"({CROWD}+ within the margin) and does not stand out of it (within {STAND_OUT:g} of the distance to "
                      f"its {CROWD}th nearest)")
    if getattr(result, "partial", 0) or getattr(result, "unverified", 0):
        console.print(f"pairs within the margin held for review by their layout: {result.partial} overlap only in "
                      f"part (shots a step aside), {result.unverified} show too few matching features to tell a copy "
                      "from a look-alike; --no-overlap skips this check")
    console.print(f"margin {result.margin:.4f}{how}, review margin {result.review_margin:.4f}"
                  + ("; approximate index: a few duplicates may be missed" if result.approximate else "")
                  + (f"; {result.capped} image(s) had over {MAX_NEIGHBOURS} others within the margin: their "
                     "nearest were kept" if getattr(result, "capped", 0) else ""))


def dedup_table(result: DedupResult | CrossResult, same_identity: bool = False) -> Table:
    """Groups (kept file first, with the group's largest inner distance) or cross pairs, one row per file."""
    if isinstance(result, CrossResult):
        table = Table("path", "duplicate in the other index", "distance", "status",
                      title=f"{len(result.pairs)} pair(s)", title_justify="left")
        for p in result.pairs:
            table.add_row(shown(p.path), shown(p.other_path), f"{p.distance:.4f}", p.status)
        return table
    members = [m for g in result.groups for m in g.members]
    review = sum(m.status == "review" for m in members)
    what = "group(s) of the same identity" if same_identity else "group(s)"
    table = Table("group", "path", "distance", "status", title=f"{len(result.groups)} {what}: "
                  f"{len(members) - review} duplicate(s), {review} to review", title_justify="left")
    for n, g in enumerate(result.groups, start=1):
        table.add_row(str(n), shown(g.keep.path), "", f"keep (max distance {g.max_distance:.4f})")
        for m in g.members:
            table.add_row("", shown(m.path), f"{m.distance:.4f}", m.status)
    for p in result.links:  # duplicates the groups do not show: never hidden
        table.add_row("link", f"{shown(p.path)} ~ {shown(p.other_path)}", f"{p.distance:.4f}",
                      "duplicate, across groups")
    return table


def print_decisions(decisions: list[Decision], as_json: bool) -> None:
    """`siamsearch decisions`: each decision with the paths its files had when it was made."""
    if as_json:
        return print_json([d.to_dict() for d in decisions])
    table = Table("decision", "file", "other file", "made", title=f"{len(decisions)} decision(s)", title_justify="left")
    for d in decisions:
        table.add_row(d.kind, shown(d.a_path), shown(d.b_path), d.created)
    console.print(table)


def print_moves(plan: MovePlan, moved: MoveReport | None, out: Console) -> None:
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
    for keep, spread in plan.wide:
        out.print(f"  the group kept as {shown(keep)} spans {spread:.4f}, beyond the margin: each file moved is "
                  "within it of the kept file, not of every other")


# (title, metric keys) of the eval table, in the order a reader wants them
EVAL_SECTIONS = (
    ("retrieval", ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r")),
    ("verification", ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "pairs")),
    ("one-shot", ("one_shot", "ways", "episodes", "episode_group_depth")),
    ("thresholds", ("threshold_best_f1", "best_f1", "threshold_at_precision", "target_precision",
                    "precision_at_threshold", "recall_at_threshold", "threshold_at_recall", "target_recall")),
)


def print_eval(run: EvalRun) -> None:
    """The metrics table by section, the notes, the plots written."""
    result = run.result
    table = Table("metric", "value", title=f"{shown(result.root)}: {result.counts['images']:,} images, "
                  f"{result.counts['identities']:,} identities", title_justify="left")
    for section, keys in EVAL_SECTIONS:
        table.add_section()
        for key in (k for k in keys if k in result.metrics):
            value = result.metrics[key]
            table.add_row(f"{section}: {key}", str(int(value)) if value.is_integer() and value > 1 else fmt(value))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    for path in run.plots:
        console.print(f"wrote {shown(path)}")


def literal_help(command: click.Command) -> None:
    """Escape rich markup in the help of a command, its options and its subcommands: the [cluster] of
    `pip install 'siamsearch[cluster]'` is a word to read, not a style to drop."""
    for attr in ("help", "short_help", "epilog"):
        if getattr(command, attr, None):
            setattr(command, attr, escape(getattr(command, attr)))
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        literal_help(sub)
