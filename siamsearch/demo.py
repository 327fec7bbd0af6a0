"""The one-command demo: real images that ship inside Python packages, trained and searched on a CPU.

First what a user does first, with no training: scikit-image's bundled sample photos with planted
near-duplicate copies (resized, cropped, JPEG-recompressed, brighter, grayscale, rotated, a captioned crop)
are indexed with the built-in near-duplicate model (siamsearch.core.builtin) and deduplicated at its default
margin, and the groups are checked against the copies that were planted. (The built-in model's whitening
and calibration were fitted on these same sample photos, though not on these copies: scripts/bench_userflow.py
measures it on photos it has never seen.)

Then training, on identities: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 32 px PNGs),
identities = the ten digits, a small encoder trained on two thirds of each digit with two whole digits held
out for validation (about a minute on two CPU cores), evaluated on the other third, indexed and queried.

Needs the demo extra: pip install "siamsearch[demo]".
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .core.checkpoint import load_checkpoint
from .commands import dedup_index
from .core.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig
from .evaluate import evaluate
from .index.indexing import index_folder
from .index.modelfile import found_model
from .core.samples import DIGIT_SIZE, build_digits, build_photos
from .index.search import Searcher
from .training.loop import Observer, Quiet, train

DIGITS_ENCODER = EncoderConfig(backbone="small", dim=64, image_size=DIGIT_SIZE, channels=1)
DIGITS_TRAINING = TrainConfig(epochs=30, ids_per_batch=8, images_per_id=12, lr=3e-3, hinge=1.0,
                              augment=AUGMENT_PRESETS["characters"], val_fraction=0.2, ways=10, episodes=200)


def score_groups(groups: list[report.DupGroup], planted: dict[str, str]) -> dict[str, int]:
    """How dedup did against the planted copies.

    Returns:
        planted; found (copies grouped with their original), found_as_duplicate (and marked duplicate,
        not review); wrong_duplicate / wrong_review (members whose photo is not the kept file's).
    """
    out = dict.fromkeys(("found", "found_as_duplicate", "wrong_duplicate", "wrong_review"), 0)
    for g in groups:
        files = {g["keep"]: "duplicate"} | {m["path"]: m["status"] for m in g["members"]}
        for copy, original in planted.items():
            if copy in files and original in files:
                out["found"] += 1
                out["found_as_duplicate"] += files[copy] == files[original] == "duplicate"
        for m in g["members"]:
            if planted.get(m["path"], m["path"]) != planted.get(g["keep"], g["keep"]):
                out[f"wrong_{m['status']}"] += 1
    return {"planted": len(planted), "groups": len(groups)} | out


@dataclass
class DemoSummary:
    """What the demo built, measured and found, and where its files are."""

    workdir: Path
    minutes: float
    models: dict[str, Path]
    training: dict[str, dict[str, Any]]  # best validation epoch of each trained model
    eval_metrics: dict[str, float]  # digits model on the held-out third of every digit
    query_accuracy: float  # fraction of query neighbours showing the query's digit
    calibration: dict[str, Any]  # the built-in model's duplicate thresholds (siamsearch.core.builtin)
    dedup: dict[str, int]  # score_groups: planted copies found, files grouped wrongly
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _digits(work: Path, minutes: float, obs: Observer, runtime: Runtime) -> dict[str, Any]:
    """Train, evaluate, plot, index and query the digits model; DemoSummary fields as a dict."""
    train_dir, test_dir = build_digits(work / "data" / "digits")
    model = work / "models" / "digits.pt"
    obs.message(f"training the digits encoder ({minutes:.1f} min)")
    trained = train(train_dir, model, DIGITS_ENCODER,
                    dataclasses.replace(DIGITS_TRAINING, max_minutes=minutes),
                    Runtime(device=runtime.device, amp=False), force=True, observer=obs)  # the demo's own folder
    obs.message("evaluating it on the held-out third of every digit")
    result = evaluate(test_dir, model, ways=10, runtime=runtime)
    files = {f"plot_{p.stem}": p for p in report.write_eval_report(result, work / "report")}
    obs.message("indexing the training digits and querying one test image of each digit")
    index_folder(train_dir, work / "indexes" / "digits", model, rebuild=True, runtime=runtime)[0].close()
    searcher = Searcher.open(work / "indexes" / "digits", runtime=runtime)
    results, _ = searcher.query_images([sorted((test_dir / str(d)).iterdir())[0] for d in range(10)], k=8)
    root = searcher.store.root
    searcher.store.close()
    files["query_html"] = report.query_page(results, root, work / "query.html", title="siamsearch demo: digits")
    files["query_sheet"] = report.contact_sheet(results, root, work / "query_sheet.png")
    hits = [n.identity == r.query.parent.name for r in results for n in r.neighbors]
    return {"best": trained.best or {}, "eval_metrics": result.metrics, "notes": result.notes,
            "query_accuracy": float(np.mean(hits)) if hits else 0.0, "files": files}


def _photos(work: Path, obs: Observer, runtime: Runtime) -> dict[str, Any]:
    """Index and deduplicate the photos with the built-in model, as `siamsearch index` and `dedup` do with no
    --model and no --margin; DemoSummary fields as a dict."""
    photos, _, planted = build_photos(work / "data")
    obs.message("indexing the photos with the built-in near-duplicate model (no training) and finding duplicates")
    store = index_folder(photos, work / "indexes" / "photos", rebuild=True, runtime=runtime)[0]
    model = found_model(store)
    store.close()
    run = dedup_index(work / "indexes" / "photos", html_file=work / "dedup.html")
    groups = run.result.to_dict()["groups"]
    return {"model": model, "calibration": load_checkpoint(model).calibration,
            "dedup": score_groups(groups, planted) | {"margin": round(run.result.margin, 4)},
            "files": {"dedup_html": run.written[0]}}


def run_demo(workdir: Path | str, minutes: float = 2.0, observer: Observer | None = None,
             runtime: Runtime = Runtime(workers=0)) -> DemoSummary:
    """Index and dedup the photos with the built-in model, then train the digits encoder within about `minutes`,
    evaluate, index, query, report.

    Training takes 70% of the minutes; the rest goes to data, evaluation, indexes and pages. Everything is
    written under workdir: data/, models/, indexes/, report/, query.html, query_sheet.png and dedup.html.
    """
    t0, obs, work = time.perf_counter(), observer or Quiet(), Path(workdir).expanduser().resolve()
    obs.message("building demo data from scikit-learn digits and scikit-image sample photos")
    photos = _photos(work, obs, runtime)
    digits = _digits(work, 0.7 * minutes, obs, runtime)
    return DemoSummary(work, (time.perf_counter() - t0) / 60, {"digits": work / "models" / "digits.pt",
                       "photos": photos["model"]}, {"digits": digits["best"]}, digits["eval_metrics"],
                       digits["query_accuracy"], photos["calibration"], photos["dedup"],
                       digits["files"] | photos["files"], digits["notes"])
