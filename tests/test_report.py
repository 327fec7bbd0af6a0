"""Plots, HTML pages and contact sheets from hand-made results and tiny image folders."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamsearch.core import metrics
from siamsearch.evaluate import EvalResult
from siamsearch.report import SHEET_LABEL, SHEET_PAD, contact_sheet, dedup_page, query_page, thumbnail, write_eval_report
from siamsearch.index.search import Neighbor, QueryResult


def fake_result(epochs: int, n_pairs: int = 200) -> EvalResult:
    """Pairs whose same-identity distances are smaller on average, with the metrics they give."""
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], n_pairs // 2)
    distances = np.where(same, rng.normal(0.5, 0.15, n_pairs), rng.normal(1.1, 0.2, n_pairs)).clip(0, 2)
    t_f1, _, _, _ = metrics.best_f1_threshold(distances, same)
    t_p, _, _ = metrics.threshold_at_precision(distances, same, 0.99)
    m = {"threshold_best_f1": t_f1, "threshold_at_precision": t_p, "target_precision": 0.99}
    history = [{"epoch": e, "loss": 1 / e, "roc_auc": 0.5 + e / 20, "p_at_1": e / 10, "one_shot": e / 12}
               for e in range(1, epochs + 1)]
    return EvalResult(Path("data"), "f" * 16, m, {}, distances.astype(np.float32), same, [], np.array([]),
                      np.zeros((0, 4), np.float32), [], [], history,
                      {"threshold_best_f1": 0.8, "source": "validation"})


def is_png(path: Path) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG" and img.width > 100 and img.height > 100


def test_eval_report_writes_the_plots(tmp_path):
    written = write_eval_report(fake_result(5), tmp_path / "r")
    assert [p.name for p in written] == ["roc.png", "distances.png", "training.png"]
    assert all(p.stat().st_size > 5000 and is_png(p) for p in written)
    without_history = write_eval_report(fake_result(0), tmp_path / "r2")
    assert [p.name for p in without_history] == ["roc.png", "distances.png"]


@pytest.fixture
def results(identity_dir):
    """Two queries; neighbours include a missing file and a file whose name holds markup."""
    odd = identity_dir / "id02" / "<script>x.png"
    odd.write_bytes((identity_dir / "id02" / "0.png").read_bytes())
    first = QueryResult(identity_dir / "id00" / "0.png", [
        Neighbor(1, "id00/1.png", 0.1, "id00", 1), Neighbor(2, "id01/missing.png", 0.5, "id01", 2),
        Neighbor(3, "id02/<script>x.png", 0.7, "id02", 3)])
    second = QueryResult(identity_dir / "id03" / "0.png", [Neighbor(1, "id03/2.png", 0.2, "id03", 4)])
    return [first, second]


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def test_query_page_is_self_contained_escaped_and_survives_missing_files(results, identity_dir, tmp_path):
    page = query_page(results, identity_dir, tmp_path / "q.html").read_text()
    sources = image_sources(page)
    assert len(sources) == page.count("<img") == 5  # 2 queries + 3 readable neighbours
    assert all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert not re.search(r"https?:", page) and "<link" not in page and "<script" not in page
    assert "&lt;script&gt;x.png" in page
    assert page.count('class="missing"') == 1 and "file not found" in page
    assert "d = 0.5000" in page and "id01/missing.png" in page


def test_a_file_name_that_is_not_utf8_is_shown_escaped_in_pages_and_csv(identity_dir, tmp_path):
    import os

    from siamsearch.report import write_csv

    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes on disk: a lone surrogate once decoded
    (identity_dir / "id02" / name).write_bytes((identity_dir / "id02" / "0.png").read_bytes())
    result = QueryResult(identity_dir / "id02" / name, [Neighbor(1, f"id02/{name}", 0.0, "id02", 1)])
    page = query_page([result], identity_dir, tmp_path / "q.html").read_text(encoding="utf-8")
    assert "caf\\udce9.png" in page and page.count("<img") == 2
    table = write_csv(tmp_path / "d.csv", ["path"], [{"path": name}]).read_text(encoding="utf-8")
    assert "caf\\udce9.png" in table


def test_dedup_page_marks_the_kept_file_and_sets_review_apart(identity_dir, tmp_path):
    groups = [{"keep": "id00/0.png", "max_distance": 0.4, "members": [
                  {"path": "id00/1.png", "distance": 0.1, "status": "duplicate"},
                  {"path": "id00/2.png", "distance": 0.35, "status": "review"}]},
              {"keep": "gone/<b>.png", "max_distance": 0.2, "members": [
                  {"path": "id05/0.png", "distance": 0.2, "status": "duplicate"}]}]
    page = dedup_page(groups, tmp_path / "d.html", root=identity_dir).read_text()
    assert page.count("<img") == 4 and page.count('class="missing"') == 1
    assert page.count('<figure class="keep">') == 2
    review_rows = re.findall(r'<div class="row reviewrow">(.*?)</div>', page)
    assert len(review_rows) == 1 and "id00/2.png" in review_rows[0] and "id00/1.png" not in review_rows[0]
    assert "2 groups, 2 duplicates, 1 to review" in page
    assert "gone/&lt;b&gt;.png" in page and "<b>" not in page
    first = dedup_page(groups, tmp_path / "d1.html", root=identity_dir, limit=1).read_text()
    assert first.count("<section>") == 1 and "2 groups, 2 duplicates, 1 to review (the first 1 groups shown)" in first


def test_contact_sheet_has_one_row_per_query_and_a_grey_box_for_missing(results, identity_dir, tmp_path):
    size = 40
    out = contact_sheet(results, identity_dir, tmp_path / "sheet.png", size=size)
    w, h = size + 2 * SHEET_PAD, size + SHEET_LABEL + 2 * SHEET_PAD
    with Image.open(out) as sheet:
        assert sheet.size == (4 * w, 2 * h)  # query + 3 neighbours, 2 queries
        missing_centre = sheet.getpixel((2 * w + w // 2, SHEET_PAD + size // 4))  # row 0, column 2
        assert missing_centre == (0xDD, 0xDD, 0xDD)
        assert sheet.getpixel((3 * w + w // 2, h + h // 2)) == (255, 255, 255)  # row 1 has one neighbour
    with pytest.raises(ValueError):
        contact_sheet([], identity_dir, tmp_path / "none.png")


def test_thumbnails_of_extreme_shapes_keep_a_pixel_each_way(tmp_path):
    for w, h in ((1, 4000), (4000, 1)):
        Image.new("RGB", (w, h), "red").save(tmp_path / f"{w}x{h}.png")
        thumb = thumbnail(tmp_path / f"{w}x{h}.png", 96)
        assert max(thumb.size) == 96 and min(thumb.size) == 1
    page = dedup_page([{"keep": "1x4000.png", "max_distance": 0.1, "members": [
        {"path": "4000x1.png", "distance": 0.1, "status": "duplicate"}]}], tmp_path / "d.html", root=tmp_path)
    assert page.stat().st_size > 0
