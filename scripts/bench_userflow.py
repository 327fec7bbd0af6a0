"""What a user gets: the README's commands, with their defaults, on a folder shaped like a photo folder.

Each run writes one collection with scripts/bench_edits.py (wallpapers cut into similar-but-distinct shots,
copies of a seeded share of them, unrelated pictures as filler: photo quarters and faces, or with --filler
dead-leaves procedural images; --files files in all) and runs, through the installed CLI
with XDG_CACHE_HOME inside --workdir:
  * builtin: `siamsearch index FOLDER --index IDX` (no --model: the built-in model), `siamsearch dedup --index IDX
    --json`;
  * readme: `siamsearch train FOLDER --self-supervised --out M.pt`, then index with `--model M.pt` and dedup:
    adapting to the very folder it dedups, as the README's walk-through does;
  * phash: imagehash's 64-bit pHash, pairs within Hamming distance 10 (imagededup's default), no grouping.

Scores are pairwise against the ground truth. True pairs: every pair within an original and its copies.
Predicted pairs: every pair within one dedup group among its kept file and its duplicates; members in the review
band and dedup's `links` are review pairs, counted apart. "false with filler": predicted pairs with a filler or
distractor image in them, to tell the wallpapers' errors from the filler's. Per kind: the share of
(original, copy) pairs predicted. "distinct grouped" / "distinct review+links": the share of similar-but-distinct
pairs (two step-aside shots of one wallpaper, gnome's light and dark variants) predicted / in review (goal 0).
--distractors N indexes the collection again beside N more dead-leaves images (builtin only) and scores it too.

    .venv/bin/python scripts/bench_userflow.py --flows builtin,readme,phash --seeds 0 1 2 3 4 --rates 0.02 0.2 0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
from bench_edits import FILLER_SIDE, FILLERS, KINDS, Collection, build_collection, load_shots
from PIL import Image

from siamsearch.core.samples import write_dead_leaves

CLI = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "siamsearch")
PHASH_BITS = 10  # imagededup's default max_distance_threshold for its 64-bit hashes
DISTRACTOR_SEED = 10_000  # added to the run's seed: filler and distractors must never be the same images
Pair = frozenset[str]


@dataclass
class Flow:
    """What one method predicted on one collection, and how long each command took."""

    name: str
    pairs: set[Pair] = field(default_factory=set)
    review: set[Pair] = field(default_factory=set)
    margin: str = "-"
    rule: str = "-"
    files: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""


def run_cli(args: list[str], cwd: Path, env: dict[str, str], flow: Flow, step: str) -> dict[str, Any] | None:
    """Run one siamsearch command, timed into flow.seconds and logged in cwd; its JSON when asked with --json."""
    start = time.perf_counter()
    done = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True)
    flow.seconds[step] = time.perf_counter() - start
    (cwd / f"{flow.name}-{step}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"{step} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}")
    return json.loads(done.stdout) if "--json" in args else None


def read_dedup(flow: Flow, report: dict[str, Any]) -> None:
    """Predicted pairs (kept file and its duplicates, per group); review pairs (review band and links); margin."""
    flow.margin, flow.rule = f"{report['margin']:.3f}", str(report.get("margin_rule", "-"))
    for group in report["groups"]:
        kept = [group["keep"]] + [m["path"] for m in group["members"] if m["status"] != "review"]
        flow.pairs |= {frozenset(p) for p in itertools.combinations(kept, 2)}
        flow.review |= {frozenset((group["keep"], m["path"])) for m in group["members"] if m["status"] == "review"}
    flow.review |= {frozenset((link["path"], link["other_path"])) for link in report["links"]}


def cli_flow(flow: Flow, folder: Path, run_dir: Path, env: dict[str, str], model: Path | None) -> Flow:
    """`siamsearch index` (with --model when given) then `dedup --json`, as the README has a user do."""
    index = run_dir / f"index-{flow.name}"
    try:
        indexed = run_cli(["index", str(folder), "--index", str(index), "--json",
                           *(["--model", str(model)] if model else [])], run_dir, env, flow, "index")
        flow.files = int(indexed["count"])
        read_dedup(flow, run_cli(["dedup", "--index", str(index), "--json"], run_dir, env, flow, "dedup"))
    except RuntimeError as exc:
        flow.error = str(exc)
    return flow


def readme_flow(folder: Path, run_dir: Path, env: dict[str, str], minutes: float | None) -> Flow:
    """Train on the folder itself (--self-supervised; --max-minutes when given), then index and dedup with that
    model."""
    flow, model = Flow("readme"), run_dir / "readme.pt"
    budget = ["--max-minutes", str(minutes)] if minutes else []
    try:
        run_cli(["train", str(folder), "--self-supervised", "--out", str(model), *budget], run_dir, env, flow, "train")
    except RuntimeError as exc:
        flow.error = str(exc)
        return flow
    return cli_flow(flow, folder, run_dir, env, model)


def phash_flow(folder: Path, files: list[str]) -> Flow:
    """imagehash's 64-bit pHash of every file; a pair is predicted within PHASH_BITS bits."""
    flow = Flow("phash", margin=f"{PHASH_BITS} bits", rule="imagededup default", files=len(files))
    start = time.perf_counter()
    hashes = {name: imagehash.phash(Image.open(folder / name)) for name in files}
    flow.pairs = {frozenset((a, b)) for a, b in itertools.combinations(files, 2) if hashes[a] - hashes[b] <= PHASH_BITS}
    flow.seconds["hash"] = time.perf_counter() - start
    return flow


def distractor_flow(collection: Collection, run_dir: Path, env: dict[str, str], count: int, seed: int) -> Flow:
    """The builtin flow on the collection (hard links) beside `count` more dead-leaves images in distractors/."""
    folder = run_dir / "with-distractors"
    folder.mkdir()
    for name in collection.files:
        os.link(collection.folder / name, folder / name)
    write_dead_leaves(folder / "distractors", count, FILLER_SIDE, DISTRACTOR_SEED + seed)
    return cli_flow(Flow(f"builtin+{count}"), folder, run_dir, env, None)


def true_pairs(collection: Collection) -> set[Pair]:
    """Every pair within one original and its copies."""
    return {frozenset(p) for group in collection.groups() for p in itertools.combinations(group, 2)}


def ratio(a: int, b: int) -> float:
    """a / b, NaN when b is 0 (printed as '-')."""
    return a / b if b else float("nan")


def scores(flow: Flow, collection: Collection) -> dict[str, Any]:
    """Pairwise precision, recall, F1; false pairs touching filler; recall per kind; similar-but-distinct pairs."""
    truth = true_pairs(collection)
    hit = len(flow.pairs & truth)
    p, r = ratio(hit, len(flow.pairs)), ratio(hit, len(truth))
    kinds: dict[str, list[bool]] = {}
    for copy, kind in collection.kind_of.items():
        kinds.setdefault(kind, []).append(frozenset((copy, collection.original_of[copy])) in flow.pairs)
    distinct = {frozenset(p) for p in collection.distinct}
    photos = set(collection.shots) | set(collection.original_of)
    return {"precision": p, "recall": r, "f1": ratio(2 * p * r, p + r) if hit else 0.0,
            "filler_false": sum(not pair <= photos for pair in flow.pairs),
            "kinds": kinds, "distinct_grouped": ratio(len(flow.pairs & distinct), len(distinct)),
            "distinct_review": ratio(len(flow.review & distinct), len(distinct))}


def fmt(x: float) -> str:
    """Three decimals, '-' for NaN."""
    return "-" if x != x else f"{x:.3f}"


def print_table(flows: list[Flow], collection: Collection) -> dict[str, dict[str, Any]]:
    """The per-run table (one row per flow), recall per kind, command times; returns each flow's scores."""
    head = ("method", "files", "margin", "margin rule", "pairs", "false with filler", "review+links", "precision", "recall", "F1",
            "distinct grouped", "distinct review+links", "seconds")
    rows, scored = [head], {}
    for f in flows:
        if f.error:
            print(f"  {f.name}: FAILED {f.error}")
            continue
        s = scored[f.name] = scores(f, collection)
        rows.append((f.name, str(f.files), f.margin, f.rule, str(len(f.pairs)), str(s["filler_false"]), str(len(f.review)),
                     fmt(s["precision"]), fmt(s["recall"]), fmt(s["f1"]), fmt(s["distinct_grouped"]),
                     fmt(s["distinct_review"]), f"{sum(f.seconds.values()):.1f}"))
    print_rows(rows)
    kinds = [("kind", "copies", *scored)] + [
        (kind, str(sum(k == kind for k in collection.kind_of.values())),
         *(fmt(ratio(sum(s["kinds"].get(kind, [])), len(s["kinds"].get(kind, [])))) for s in scored.values()))
        for kind in KINDS]
    print("  recall per copy kind:")
    print_rows(kinds)
    for f in flows:
        print(f"  {f.name} commands: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in f.seconds.items()))
    return scored


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def print_summary(results: dict[tuple[int, float], dict[str, dict[str, Any]]], seeds: list[int],
                  rates: list[float]) -> None:
    """F1 and precision per seed and rate, per flow; then each flow's recall per kind over the whole grid."""
    flows = sorted({name for scored in results.values() for name in scored})
    print("\nsummary: F1 / precision")
    for name in flows:
        rows = [(name, *(f"rate {r:g}" for r in rates))]
        for seed in seeds:
            cells = [results.get((seed, r), {}).get(name) for r in rates]
            rows.append((f"seed {seed}", *(f"{fmt(c['f1'])} / {fmt(c['precision'])}" if c else "-" for c in cells)))
        rows.append(("mean", *(mean_cell([results.get((s, r), {}).get(name) for s in seeds]) for r in rates)))
        print_rows(rows)
    print("\nrecall per copy kind over the grid (found / copies)")
    rows = [("kind", *flows)]
    for kind in KINDS:
        cells = []
        for name in flows:
            found = [hit for scored in results.values() if name in scored
                     for hit in scored[name]["kinds"].get(kind, [])]
            cells.append(f"{fmt(ratio(sum(found), len(found)))} ({sum(found)}/{len(found)})")
        rows.append((kind, *cells))
    print_rows(rows)


def mean_cell(cells: list[dict[str, Any] | None]) -> str:
    """Mean F1 / precision over the seeds that ran (a precision with no predicted pair left out)."""
    done = [c for c in cells if c]
    precisions = [c["precision"] for c in done if c["precision"] == c["precision"]]
    return f"{fmt(ratio(sum(c['f1'] for c in done), len(done)))} / {fmt(ratio(sum(precisions), len(precisions)))}"


def main() -> None:
    """Run every flow on every (seed, rate) collection; one table per run, a summary at the end."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_userflow"))
    parser.add_argument("--debs", type=Path, default=None, help="where the wallpaper .debs are (default WORKDIR/debs)")
    parser.add_argument("--flows", default="builtin,phash", help="comma-separated: builtin, phash, readme")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2])
    parser.add_argument("--files", type=int, default=240)
    parser.add_argument("--filler", choices=FILLERS, default="photos", help="what fills the folder (bench_edits.py)")
    parser.add_argument("--minutes", type=float, default=None, help="readme: train's --max-minutes (default: none)")
    parser.add_argument("--distractors", type=int, default=0, help="builtin: also index N more dead-leaves images")
    args = parser.parse_args()
    flows = args.flows.split(",")
    workdir = args.workdir.resolve()
    env = os.environ | {"XDG_CACHE_HOME": str(workdir / "cache")}
    debs = args.debs or workdir / "debs"
    shots = load_shots(debs)
    results = {}
    for seed, rate in itertools.product(args.seeds, args.rates):
        run_dir = workdir / f"seed{seed}-rate{rate:g}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        collection = build_collection(run_dir / "photos", shots, args.files, rate, seed, args.filler, debs)
        made = time.perf_counter() - start
        done = []
        if "builtin" in flows:
            done.append(cli_flow(Flow("builtin"), collection.folder, run_dir, env, None))
        if "readme" in flows:
            done.append(readme_flow(collection.folder, run_dir, env, args.minutes))
        if "phash" in flows:
            done.append(phash_flow(collection.folder, collection.files))
        if args.distractors and "builtin" in flows:
            done.append(distractor_flow(collection, run_dir, env, args.distractors, seed))
        print(f"\nseed {seed}  rate {rate:g}: {len(collection.files)} files, {len(collection.groups())} originals "
              f"with {len(collection.original_of)} copies ({len(set(collection.kind_of.values()))} of {len(KINDS)} "
              f"kinds), {len(collection.distinct)} similar-but-distinct pairs; written in {made:.1f}s, "
              f"total {time.perf_counter() - start:.1f}s")
        results[(seed, rate)] = print_table(done, collection)
    if len(results) > 1:
        print_summary(results, args.seeds, args.rates)


if __name__ == "__main__":
    main()
