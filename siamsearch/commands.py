"""Use cases that span several modules, one per CLI command: each returns a result with to_dict().

The CLI and a notebook call the same function, so `siamsearch dedup` and `dedup_index(...)` cannot
drift apart. Use cases that live in one module (index_folder, Searcher, train, evaluate, calibrate,
undo_moves) are called directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import report
from .duplicates import decisions, standins
from .core.calibration import FALSE_PAIRS_PER_1000, MarginChoice, collection_margin
from .core.checkpoint import CheckpointError, read_calibration, update_model_file
from .duplicates.closepairs import Progress
from .duplicates.crowds import CROWD
from .core.config import Runtime
from .duplicates.dedup import (
    CrossResult,
    DedupError,
    DedupResult,
    find_duplicates,
    find_duplicates_in,
    find_identical,
)
from .training.distributed import World
from .core.errors import NotFoundError, RefusedError, UsageError
from .evaluate import EvalResult, calibrate, evaluate
from .core.images import Failure, Scan, Selection, scan_images
from .index.folder import open_rows, read_manifest
from .index.rows import Row
from .index.modelfile import found_model
from .duplicates.moves import MovePlan, MoveReport, apply_moves, plan_moves
from .training.recipes import Choice, choose
from .core.samples import build_background
from .index.search import QueryResult, Searcher
from .index.store import Store
from .training.loop import Observer, TrainResult, train


def model_calibration(store: Store) -> dict[str, Any]:
    """The calibration (with its "purpose") of the model that built the index (siamsearch.index.modelfile.found_model).

    Raises:
        DedupError: no model file, not the model that built the index, or no calibration in it.
    """
    model = found_model(store)
    if model is None:
        raise DedupError(f"the model that built {store.path} is neither where its manifest says nor next to the "
                         "index, to read a calibrated margin from; pass --margin")
    try:
        fingerprint, calibration = read_calibration(model)
    except CheckpointError as exc:
        raise DedupError(f"{exc}; pass --margin") from None
    if fingerprint != store.fingerprint:
        raise DedupError(f"{model} is not the model that built {store.path}; pass --margin")
    if "threshold_best_f1" not in calibration:
        raise DedupError(f"{model} holds no calibration; run `siamsearch calibrate` on labelled data or pass "
                         "--margin")
    return calibration


def default_margin(store: Store, false_pairs_per_1000: float = FALSE_PAIRS_PER_1000) -> MarginChoice:
    """The margin the model's calibration gives an index of this size (siamsearch.core.calibration.collection_margin)."""
    return collection_margin(model_calibration(store), len(store), false_pairs_per_1000)


@dataclass
class DedupRun:
    """What `siamsearch dedup` did: the groups (or cross pairs), the reports written, the moves."""

    result: DedupResult | CrossResult
    chosen: MarginChoice | None = None  # how the default margin was chosen; None when --margin was given
    purpose: str | None = None  # what the model was trained for (known when it chose the margin); "identities"
    #                             groups are photos of the same person or product, not copies
    plan: MovePlan | None = None
    moved: MoveReport | None = None
    written: list[Path] = field(default_factory=list)
    decisions_applied: int = 0  # places a person's recorded decisions changed the groups (duplicates.decisions)

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON, how the margin was chosen, and the moves when a destination was given."""
        out = self.result.to_dict() | {"purpose": self.purpose, "decisions_applied": self.decisions_applied}
        if self.chosen is not None:
            out |= self.chosen.to_dict()
        if self.plan is not None:
            moves = self.moved or MoveReport(None, [m.path for m in self.plan.moves], self.plan.skipped)
            out["moves"] = {"dest": str(self.plan.dest), "dry_run": self.moved is None, **moves.to_dict(),
                            "wide_groups": [{"keep": keep, "max_distance": round(d, 6)} for keep, d in self.plan.wide]}
        return out


def _check_dedup_args(against: Path | str | None, move_to: Path | str | None, html_file: Path | None,
                      identical_only: bool = False, margin: float | None = None,
                      review_margin: float | None = None) -> None:
    """Refuse a bad combination before opening anything (find_duplicates checks linkage and keep itself)."""
    if identical_only and (against is not None or margin is not None or review_margin is not None):
        raise UsageError("--identical-only compares content hashes within one index: no --margin, --review-margin "
                         "or --against")
    if against is not None and move_to is not None:
        raise UsageError("--move-to works within one index; it does not combine with --against")
    if against is not None and html_file is not None:
        raise UsageError("--html shows the groups of one index; with --against use --json or --csv")


def dedup_index(index_dir: Path | str, *, margin: float | None = None, review_margin: float | None = None,
                linkage: str = "kept", keep: str = "largest", against: Path | str | None = None,
                move_to: Path | str | None = None, yes: bool = False, csv_file: Path | None = None,
                html_file: Path | None = None, false_pairs_per_1000: float = FALSE_PAIRS_PER_1000,
                identical_only: bool = False, html_limit: int | None = None, ignore_decisions: bool = False,
                progress: Progress | None = None, crowd: int = CROWD, check_overlap: bool = True) -> DedupRun:
    """Group an index's duplicates at the margin (when None, the one its model gives this many images), report,
    then move.

    Reports are written before any file moves, so the HTML shows every file in place and a failing
    report cannot hide what moved. Without yes, move_to is a dry run: the plan only. A model trained on
    identities groups photos of one person or product, not copies: moving them needs an explicit margin.
    identical_only groups byte-identical files by their stored hashes: no model, no vectors. The HTML page
    shows the html_limit biggest groups first; progress(done, total) follows the search. The decisions recorded in
    the index (siamsearch.duplicates.decisions) shape every output unless ignore_decisions. crowd: the neighbours
    within the margin that make a crowd, whose members' duplicates must stand out of it (0: off; duplicates.crowds).
    check_overlap: pairs within the margin whose pictures overlap only in part are for review (duplicates.overlap).

    Raises:
        RefusedError: --move-to with an identity model and no --margin.
    """
    _check_dedup_args(against, move_to, html_file, identical_only, margin, review_margin)
    decided = decisions.Applied() if ignore_decisions else decisions.for_index(index_dir)
    run = duplicate_groups(index_dir, margin, review_margin, linkage, keep, against, move_to, false_pairs_per_1000,
                           identical_only, progress, decided.keep, crowd, check_overlap)
    if isinstance(run.result, DedupResult):
        run.result, run.decisions_applied = decided.result(run.result)
    if csv_file is not None:
        run.written.append(report.write_csv(csv_file, run.result.FIELDS, run.result.records()))
    if html_file is not None:
        run.written.append(report.dedup_page(run.result.to_dict()["groups"], html_file, root=run.result.root,
                                             limit=html_limit))
    if move_to is not None:
        _move(run, index_dir, move_to, yes)
    return run


def _move(run: DedupRun, index_dir: Path | str, move_to: Path | str, yes: bool) -> None:
    """Plan the moves (holding files kept for earlier moves that would drift), apply them with yes, and remember
    which file stood in for each moved one."""
    with Store.open(index_dir) as store:
        run.plan = plan_moves(run.result, move_to, index=index_dir, held=standins.held(store, run.result))
        run.moved = apply_moves(run.plan) if yes else None
        if run.moved is not None:
            standins.remember(store, run.plan, run.moved, run.result)


def decide(index_dir: Path | str, kind: str, paths: Sequence[Path | str]) -> int:
    """Record a person's decision about indexed files (duplicates.decisions.record), named by their path (relative
    to the index root, or absolute); how many decisions it made.

    Raises:
        NotFoundError: a path the index does not hold. DecisionError: see record.
    """
    return decisions.record(index_dir, kind, _rows_at(index_dir, paths))


def forget_decisions(index_dir: Path | str, paths: Sequence[Path | str] | None = None) -> int:
    """Remove the decisions about these indexed files (all of them when paths is None); how many went."""
    return decisions.forget(index_dir, None if paths is None else _rows_at(index_dir, paths))


def _rows_at(index_dir: Path | str, paths: Sequence[Path | str]) -> list[Row]:
    """The rows of these files, by path relative to the index root or absolute.

    Raises:
        NotFoundError: a path the index does not hold.
    """
    folder = Path(index_dir)
    table = open_rows(folder, Path(read_manifest(folder)["root"]))
    try:
        wanted = {_relative_to(Path(p), table.root): str(p) for p in paths}
        found = {row.path: row for row in table if row.path in wanted}
    finally:
        table.close()
    missing = [given for rel, given in wanted.items() if rel not in found]
    if missing:
        raise NotFoundError(f"{missing[0]} is not in the index {folder}")
    return [found[rel] for rel in wanted]


def _relative_to(path: Path, root: Path) -> str:
    """A path as the index names it: relative to root, posix."""
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return path.as_posix()


def identical_files(index_dir: Path | str, keep: str = "largest", prefer: frozenset[str] = frozenset()) -> DedupResult:
    """find_identical over an index's rows, read from its manifest and SQLite alone: FAISS and the model stay shut.

    Raises:
        NotAnIndexError, UnsupportedFormatError, CorruptIndexError: not a readable index.
    """
    folder = Path(index_dir)
    manifest = read_manifest(folder)
    table = open_rows(folder, Path(manifest["root"]))
    try:
        return find_identical(table, table.root, keep, prefer)
    finally:
        table.close()


def duplicate_groups(index_dir: Path | str, margin: float | None = None, review_margin: float | None = None,
                     linkage: str = "kept", keep: str = "largest", against: Path | str | None = None,
                     move_to: Path | str | None = None, false_pairs_per_1000: float = FALSE_PAIRS_PER_1000,
                     identical_only: bool = False, progress: Progress | None = None,
                     prefer: frozenset[str] = frozenset(), crowd: int = CROWD,
                     check_overlap: bool = True) -> DedupRun:
    """dedup_index's search: the groups (or cross pairs) and how the margin was chosen, the files in prefer kept
    first, no other decision applied and nothing written (what the review page starts from)."""
    if identical_only:
        return DedupRun(identical_files(index_dir, keep, prefer))
    with Store.open(index_dir) as store:
        calibration = model_calibration(store) if margin is None else {}
        chosen = collection_margin(calibration, len(store), false_pairs_per_1000) if calibration else None
        purpose = calibration.get("purpose")
        if purpose == "identities" and move_to is not None:
            raise RefusedError("this index's model was trained on identities: its groups are photos of one person "
                               "or product, not copies; moving them needs an explicit --margin")
        margin = chosen.margin if chosen else margin
        if against is None:
            result: DedupResult | CrossResult = find_duplicates(store, margin, review_margin, linkage, keep,
                                                                progress=progress, prefer=prefer, crowd=crowd,
                                                                check_overlap=check_overlap)
        else:
            with Store.open(against) as other:
                result = find_duplicates_in(store, other, margin, review_margin)
    return DedupRun(result, chosen, purpose)


def index_info(index_dir: Path | str) -> dict[str, Any]:
    """What an index holds (the manifest, counts, kind, size on disk) and how many identities, counted in SQL."""
    with Store.open(index_dir) as store:
        return store.info() | {"identities": store.identities()}


@dataclass
class QueryRun:
    """The neighbours of each readable query image, the unreadable ones, and the pages written."""

    results: list[QueryResult]
    failures: list[Failure]
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> list[dict[str, Any]]:
        """One object per query: {query, neighbors: [{rank, path, distance, identity}]}."""
        return [r.to_dict() for r in self.results]


def listed_paths(data: bytes, nul: bool = False) -> list[Path]:
    """Paths one per line (CRLF too) or NUL-separated (find -print0), empty entries skipped; names are bytes, as on disk."""
    entries = data.split(b"\0") if nul else [line.removesuffix(b"\r") for line in data.split(b"\n")]
    return [Path(os.fsdecode(entry)) for entry in entries if entry]


def query_paths(images: Sequence[Path | str], *, from_file: Path | str | None = None, stdin: BinaryIO | None = None,
                nul: bool = False) -> list[Path]:
    """The query paths: those named, "-" replaced by the list on stdin, then those listed in from_file.

    Raises:
        NotFoundError: from_file does not exist. UsageError: no paths at all, or "-" with no stdin.
    """
    paths: list[Path] = []
    for image in images:
        if str(image) != "-":
            paths.append(Path(image))
        elif stdin is None:
            raise UsageError("- reads query paths from stdin, but there is none")
        else:
            paths.extend(listed_paths(stdin.read(), nul))
    if from_file is not None:
        try:
            paths.extend(listed_paths(Path(from_file).read_bytes(), nul))
        except FileNotFoundError:
            raise NotFoundError(f"no such list file: {from_file}") from None
    if not paths:
        raise UsageError("no query images: name some, pass - to read their paths from stdin, or --from-file LIST")
    return paths


def query_index(index_dir: Path | str, images: Sequence[Path | str], *, k: int = 10, margin: float | None = None,
                exclude_self: bool = False, model: Path | str | None = None, runtime: Runtime = Runtime(workers=0),
                html_file: Path | None = None, sheet: Path | None = None) -> QueryRun:
    """Embed the query images (folders expand), search the index, and draw the HTML page or contact sheet.

    Raises:
        NotFoundError: a named image or folder does not exist (a broken link is a skipped file, not this).
    """
    missing = [str(p) for p in images if not os.path.lexists(p)]
    if missing:
        raise NotFoundError(f"no such file or folder: {missing[0]}")
    searcher = Searcher.open(index_dir, model, runtime)
    with searcher.store:
        k = max(1, min(k, len(searcher.store)))  # more neighbours than rows would only allocate padding
        run = QueryRun(*searcher.query_images(images, k, margin, exclude_self))
    if not run.results and not run.failures:
        raise UsageError(f"no images found in {', '.join(map(str, images))}")
    if html_file is not None:
        run.written.append(report.query_page(run.results, searcher.store.root, html_file))
    if sheet is not None and run.results:
        run.written.append(report.contact_sheet(run.results, searcher.store.root, sheet))
    return run


@dataclass
class EvalRun:
    """evaluate()'s result and the plots drawn from it."""

    result: EvalResult
    plots: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON summary with the plots' paths."""
        return self.result.to_dict() | {"plots": [str(p) for p in self.plots]}


def evaluate_model(data_dir: Path | str, model: Path | str, *, report_dir: Path | None = None,
                   runtime: Runtime = Runtime(), **options: Any) -> EvalRun:
    """evaluate() on this machine's runtime (options are its other keyword arguments), then ROC, distance and
    training plots when report_dir is set."""
    result = evaluate(data_dir, model, runtime=runtime, **options)
    return EvalRun(result, report.write_eval_report(result, report_dir) if report_dir is not None else [])


def train_folder(data_dir: Path, out: Path, options: dict[str, Any], *, recipe: str = "auto",
                 runtime: Runtime = Runtime(), selection: Selection | None = None, observer: Observer,
                 world: World = World(), weights_file: Path | None = None, resume: bool = False,
                 force: bool = False) -> tuple[Choice, TrainResult]:
    """Choose the recipe from a sample of the folder (or take the one named), give it the options, train.

    options: TrainConfig and EncoderConfig fields by name; each one not None replaces the recipe's
    (Recipe.with_options). The choice is the observer's first message, once train has checked `out`.
    A near-duplicate model is then calibrated on the duplicate-free background (calibrate_on_background).
    """
    scan = scan_images(data_dir, selection or Selection())  # once: the recipe's sample and the training data
    choice = chosen_recipe(data_dir, options, recipe, scan=scan)
    enc, cfg = choice.recipe.encoder, choice.recipe.train
    line = f"recipe: {choice.name} ({choice.survey.describe()}); the options given replace its fields"
    result = train(Path(data_dir), out, enc, cfg, runtime, weights_file=weights_file, resume=resume, force=force,
                   observer=_Headed(observer, line), world=world, scan=scan)
    if cfg.self_supervised and result.best is not None and result.stopped != "interrupted" and world.main:
        result.calibration = calibrate_on_background(out, runtime)
        observer.message(f"calibrated on the background photos: {result.calibration['tails']['different_pairs']:,} "
                         "pairs of distinct images, none of them from the folder trained on")
    return choice, result


def chosen_recipe(data_dir: Path, options: dict[str, Any], recipe: str = "auto", selection: Selection | None = None,
                  scan: Scan | None = None) -> Choice:
    """The recipe train would run on this folder (chosen from a sample of it, or the one named, fitted to it),
    with the options given in place of its fields: what `train --show` prints, and what train runs.
    scan: the folder already scanned (else the files selection keeps)."""
    scan = scan or scan_images(data_dir, selection or Selection())
    choice = choose(scan.images, Path(data_dir), recipe, bool(options.get("self_supervised")))
    return Choice(choice.recipe.with_options(options), choice.survey)


def calibrate_on_background(model: Path, runtime: Runtime = Runtime()) -> dict[str, Any]:
    """Store in a near-duplicate model the calibration of the duplicate-free background (samples.build_background).

    Its own folder cannot calibrate it: a folder worth deduplicating holds copies, which would count as
    distinct images and put dedup's margin at 0. The background's photos are distinct by construction, and
    their copies are the same pairs.
    """
    with tempfile.TemporaryDirectory(prefix="siamsearch-background-") as folder:
        found = calibrate(build_background(Path(folder)), model, runtime=runtime, group_depth=1)
    found["source"] = "background"  # the folder it was measured in is gone
    update_model_file(model, calibration=found)
    return found


class _Headed:
    """An Observer whose first message is preceded by a heading: the recipe, said once train has checked --out."""

    def __init__(self, inner: Observer, heading: str) -> None:
        self.inner, self.heading = inner, heading

    def message(self, text: str) -> None:
        if self.heading:
            self.inner.message(self.heading)
            self.heading = ""
        self.inner.message(text)

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.inner.epoch_start(epoch, steps)

    def step(self, images: int, loss: float) -> None:
        self.inner.step(images, loss)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.inner.epoch_end(record)
