"""Pictures people look at: evaluation plots, self-contained HTML pages and contact sheets.

Plots need matplotlib (`pip install "siamsearch[report]"`); it is imported inside the functions,
with no pyplot and no global backend, so importing siamsearch stays light. HTML pages embed every
thumbnail as a base64 JPEG data URI and carry their own CSS: one file, no network, no scripts.
Images that cannot be read are drawn as a placeholder box with the reason, never an error.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
from PIL import Image, ImageDraw

from .core import metrics
from .core.calibration import calibrated_margin
from .evaluate import EvalResult
from .core.images import BadImageError, load_image
from .index.search import QueryResult

# ---- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by Agg, without pyplot's global state."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "siamsearch[report]"') from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_roc(distances: np.ndarray, same: np.ndarray, path: Path) -> Path:
    """ROC curve of pair verification (true vs false accept rate), AUC and EER in the legend."""
    far, tar, _ = metrics.roc_curve(distances, same)
    rate, _ = metrics.eer(distances, same)
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.plot(far, tar, lw=2, label=f"AUC {metrics.roc_auc(distances, same):.4f}, EER {rate:.2%}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    ax.set(xlabel="false accept rate (different identities called same)",
           ylabel="true accept rate (same identity found)", xlim=(0, 1), ylim=(0, 1.01),
           title=f"verification ROC, {len(distances):,} pairs")
    ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_distances(distances: np.ndarray, same: np.ndarray, path: Path,
                   thresholds: dict[str, float]) -> Path:
    """Histograms of same- and different-identity pair distances with the threshold lines drawn in.

    Args:
        thresholds: label → distance, one vertical line each (e.g. the best-F1 margin).
    """
    d, s = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    top = max([float(d.max(initial=0.0)), *thresholds.values()]) * 1.05 or 1.0
    bins = np.linspace(0.0, top, 61)
    fig = _figure(7, 4)
    ax = fig.subplots()
    ax.hist(d[s], bins=bins, density=True, alpha=0.6, color="tab:green", label=f"same identity ({s.sum():,})")
    ax.hist(d[~s], bins=bins, density=True, alpha=0.6, color="tab:red", label=f"different ({(~s).sum():,})")
    for (label, t), style in zip(thresholds.items(), ("-", "--", "-.", ":")):
        ax.axvline(t, c="black", ls=style, lw=1.5, label=f"{label} {t:.4g}")
    ax.set(xlabel="Euclidean distance between unit embeddings", ylabel="density",
           title="pair distances: left of a line is called 'same'")
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


def plot_training(history: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Loss and validation metrics (ROC AUC, P@1, one-shot) per epoch; None when there is no history."""
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig = _figure(9, 3.5)
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r.get("loss", math.nan) for r in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("roc_auc", "ROC AUC"), ("p_at_1", "P@1"), ("one_shot", "one-shot")):
        if any(key in r for r in history):
            right.plot(epochs, [r.get(key, math.nan) for r in history], marker="o", label=label)
    right.set(xlabel="epoch", ylim=(0, 1.02), title="held-out validation")
    if right.lines:
        right.legend(loc="lower right")
    return _save(fig, Path(path))


def write_eval_report(result: EvalResult, out_dir: Path) -> list[Path]:
    """roc.png, distances.png and (when the model holds a history) training.png in out_dir.

    The distance plot shows this data's best-F1 and at-precision thresholds, and the model's stored
    calibration (what dedup uses by default) dashed, when it has one.
    """
    out_dir, m = Path(out_dir), result.metrics
    lines = {"best F1 here": m["threshold_best_f1"],
             f"precision {m['target_precision']:g} here": m["threshold_at_precision"]}
    if "threshold_best_f1" in result.calibration:
        lines["dedup margin stored in the model"] = calibrated_margin(result.calibration)
    written = [plot_roc(result.distances, result.same, out_dir / "roc.png"),
               plot_distances(result.distances, result.same, out_dir / "distances.png", lines),
               plot_training(result.history, out_dir / "training.png")]
    return [p for p in written if p is not None]


# ---- thumbnails ----------------------------------------------------------------------------------


def thumbnail(path: Path | str, size: int) -> Image.Image | str:
    """The image fitted inside size x size (RGB), at least one pixel each way (a 1x4000 strip too), or why not."""
    try:
        img = load_image(path, 3, draft_size=size)
    except BadImageError as exc:
        return exc.reason
    scale = min(size / img.width, size / img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.BILINEAR)


def _data_uri(img: Image.Image) -> str:
    """A JPEG data URI, so the page needs no files beside it."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- HTML pages ----------------------------------------------------------------------------------

_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.05em;margin:1.2em 0 .4em;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;padding:6px;background:#fff;border:3px solid #ddd;border-radius:6px;width:SIZEpx}
figure img,.missing{display:block;max-width:SIZEpx;max-height:SIZEpx;margin:auto}
.missing{width:SIZEpx;height:SIZEpx;background:repeating-linear-gradient(45deg,#eee,#eee 8px,#ddd 8px,#ddd 16px);
 color:#a00;display:flex;align-items:center;justify-content:center;text-align:center;font-size:12px}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.query{border-color:#2a6ebb}.keep{border-color:#2e8b57}.duplicate{border-color:#999}
.review{border:3px dashed #e08a00;background:#fff8ec}
.badge{display:inline-block;padding:0 5px;border-radius:3px;color:#fff;font-weight:600;font-size:11px}
.b-query{background:#2a6ebb}.b-keep{background:#2e8b57}.b-review{background:#e08a00}.b-duplicate{background:#777}
.reviewrow{margin-top:8px;padding-top:8px;border-top:1px dashed #e08a00}
section{margin-bottom:1.5em}.summary{color:#555}
"""


def _cell(path: Path | str, kind: str, caption: Sequence[str], size: int, badge: bool = False) -> str:
    """One <figure>: thumbnail (or a placeholder with the reason), optional badge, escaped caption lines."""
    thumb = thumbnail(path, size)
    if isinstance(thumb, str):
        picture = f'<div class="missing">cannot show<br>{html.escape(thumb)}</div>'
    else:
        picture = f'<img src="{_data_uri(thumb)}" alt="{html.escape(str(path))}">'
    mark = f'<span class="badge b-{kind}">{kind}</span><br>' if badge else ""
    lines = "<br>".join(html.escape(str(line)) for line in caption)
    return f'<figure class="{kind}">{picture}<figcaption>{mark}{lines}</figcaption></figure>'


def _page(title: str, summary: str, body: Sequence[str], size: int) -> str:
    """A whole HTML document with inline CSS; every argument must be escaped already."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<style>{_CSS.replace("SIZE", str(size))}</style></head><body><h1>{title}</h1>'
            f'<p class="summary">{summary}</p>\n' + "\n".join(body) + "\n</body></html>\n")


def _write(path: Path, text: str) -> Path:
    """Write a page as UTF-8, creating its folder; a file name that is not UTF-8 shows its odd bytes escaped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", errors="backslashreplace")
    return path


def query_page(results: Sequence[QueryResult], root: Path | str, out: Path | str, *,
               title: str = "siamsearch query", size: int = 128) -> Path:
    """One HTML page: each query image followed by its neighbours, distance and identity under each.

    Args:
        results: from Searcher.query_images.
        root: the index root; neighbour paths are relative to it (Store.root).
    """
    root = Path(root)
    sections = []
    for r in results:
        cells = [_cell(r.query, "query", [r.query.name], size, badge=True)]
        cells += [_cell(root / n.path, "neighbor", [f"#{n.rank}  d = {n.distance:.4f}", n.identity or "", n.path],
                        size) for n in r.neighbors]
        sections.append(f'<section><h2>{html.escape(str(r.query))}</h2><div class="row">{"".join(cells)}</div>'
                        "</section>")
    summary = f"{len(results)} queries, index root {root}"
    return _write(Path(out), _page(html.escape(title), html.escape(summary), sections, size))


class DupMember(TypedDict):
    """A file of a duplicate group besides the kept one."""

    path: str  # absolute, or relative to the page's root
    distance: float  # to the kept file
    status: Literal["duplicate", "identical", "review"]  # "review": beyond the duplicate margin, within the review margin


class DupGroup(TypedDict):
    """A duplicate group as dedup reports it (the shape of DedupResult.to_dict()["groups"])."""

    keep: str
    members: list[DupMember]
    max_distance: float


def _others(group: DupGroup, status: str) -> list[DupMember]:
    """The members other than the kept file with this status ("review", or anything else = "duplicate")."""
    review = status == "review"
    return [m for m in group["members"] if m["path"] != group["keep"] and (m["status"] == "review") == review]


def _group_section(n: int, group: DupGroup, base: Path, size: int) -> str:
    """One group: the kept file, then its duplicates, then (in a row of their own) the members to review."""
    rows = {status: "".join(_cell(base / m["path"], status, [f'd = {m["distance"]:.4f}', m["path"]], size, badge=True)
                            for m in _others(group, status)) for status in ("duplicate", "review")}
    head = (f"group {n}: keep {group['keep']}, {len(_others(group, 'duplicate'))} duplicate(s), "
            f"{len(_others(group, 'review'))} to review, max distance {group['max_distance']:.4f}")
    keep = _cell(base / group["keep"], "keep", [group["keep"]], size, badge=True)
    review = f'<div class="row reviewrow">{rows["review"]}</div>' if rows["review"] else ""
    return f'<section><h2>{html.escape(head)}</h2><div class="row">{keep}{rows["duplicate"]}</div>{review}</section>'


def dedup_page(groups: Sequence[DupGroup], out: Path | str, *, root: Path | str | None = None,
               title: str = "siamsearch dedup", size: int = 128, limit: int | None = None) -> Path:
    """One HTML page of duplicate groups: the kept file marked, "review" members set apart below.

    Args:
        groups: plain dicts (see DupGroup); paths are resolved against root when relative.
        root: folder the paths are relative to, if they are.
        limit: show only the first `limit` groups (every thumbnail is inside the page, ~5 KB each).
    """
    base = Path(root) if root is not None else Path()
    shown = groups[:limit]
    summary = (f"{len(groups)} groups, {sum(len(_others(g, 'duplicate')) for g in groups)} duplicates, "
               f"{sum(len(_others(g, 'review')) for g in groups)} to review"
               + (f" (the first {len(shown)} groups shown)" if len(shown) < len(groups) else ""))
    sections = [_group_section(n, g, base, size) for n, g in enumerate(shown, start=1)]
    return _write(Path(out), _page(html.escape(title), html.escape(summary), sections, size))


# ---- CSV ----------------------------------------------------------------------------------------

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's CSV injection list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula gets a leading quote; numbers pass as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_csv(path: Path | str, fields: Sequence[str], records: Sequence[Mapping[str, Any]]) -> Path:
    """One row per record under a header (written even when there are none); file names cannot become formulas."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:  # names not UTF-8
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in records)
    return Path(path)


# ---- contact sheets ------------------------------------------------------------------------------

SHEET_PAD, SHEET_LABEL = 4, 14  # pixels around each thumbnail, and below it for the label


def _sheet_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, path: Path | str, label: str,
                xy: tuple[int, int], size: int, frame: str | None = None) -> None:
    """Paste one centred thumbnail (or a grey box with the reason) and its label at cell corner xy."""
    x, y = xy[0] + SHEET_PAD, xy[1] + SHEET_PAD
    thumb = thumbnail(path, size)
    if isinstance(thumb, str):
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill="#dddddd", outline="#aa0000")
        draw.text((x + 3, y + size // 2 - 6), thumb[: size // 6], fill="#aa0000")
    else:
        sheet.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))
    if frame:
        draw.rectangle((x - 2, y - 2, x + size + 1, y + size + 1), outline=frame, width=2)
    draw.text((x, y + size + 1), label[: size // 6], fill="black")


def contact_sheet(results: Sequence[QueryResult], root: Path | str, out: Path | str, *, size: int = 96) -> Path:
    """A PNG grid, one row per query: the query (blue frame) then its neighbours with their distances.

    Each cell is size + 2 * SHEET_PAD wide and size + SHEET_LABEL + 2 * SHEET_PAD tall; there are
    1 + (most neighbours of any query) columns.

    Raises:
        ValueError: no results.
    """
    if not results:
        raise ValueError("no query results to draw")
    root, out = Path(root), Path(out)
    cols = 1 + max(len(r.neighbors) for r in results)
    w, h = size + 2 * SHEET_PAD, size + SHEET_LABEL + 2 * SHEET_PAD
    sheet = Image.new("RGB", (cols * w, len(results) * h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, r in enumerate(results):
        _sheet_cell(sheet, draw, r.query, "query", (0, row * h), size, frame="#2a6ebb")
        for col, n in enumerate(r.neighbors, start=1):
            label = f"{n.distance:.3f}" + (f" [{n.identity}]" if n.identity else "")
            _sheet_cell(sheet, draw, root / n.path, label, (col * w, row * h), size)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, "PNG")
    return out
