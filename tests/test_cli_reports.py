"""eval, calibrate and the pictures (query --html/--sheet, dedup --html) through the CLI, on real files."""

import json
import re

import pytest
from conftest import run_cli as run
from PIL import Image

from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.core.calibration import collection_margin
from siamsearch.index.store import Store
from siamsearch.index.indexing import index_folder


def images_in(page: str) -> list[str]:
    """The src of every <img> of a page."""
    return re.findall(r'<img src="([^"]*)"', page)


def test_eval_json_has_every_metric_and_report_writes_the_plots(identity_dir, model_file, tmp_path):
    res = run("eval", identity_dir, "--model", model_file, "--episodes", 30, "--ways", 5, "--workers", 0,
              "--json", "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in ("precision_at_1", "recall_at_10", "map_at_r", "roc_auc", "eer", "tar_at_far_1e-3", "one_shot",
                "threshold_best_f1", "threshold_at_precision"):
        assert key in data["metrics"], key
    assert data["metrics"]["ways"] == 5 and data["counts"]["images"] == 96
    assert sorted(p.rsplit("/", 1)[1] for p in data["plots"]) == ["distances.png", "roc.png"]  # no history: untrained
    for name in ("roc.png", "distances.png"):
        assert Image.open(tmp_path / "rep" / name).format == "PNG"


def test_eval_table_and_its_one_line_errors(identity_dir, model_file, tmp_path):
    res = run("eval", identity_dir, "--model", model_file, "--episodes", 20, "--workers", 0)
    assert res.exit_code == 0, res.output
    assert "retrieval: precision_at_1" in res.stdout and "one-shot: one_shot" in res.stdout
    for args in ((tmp_path / "missing", "--model", model_file), (identity_dir, "--model", tmp_path / "none.pt"),
                 (identity_dir / "id00", "--model", model_file)):  # one folder = one identity's images, unlabelled
        res = run("eval", *args, "--workers", 0)
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output


def test_calibrate_changes_dedups_default_margin_and_keeps_the_index_valid(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)[0].close()
    before = load_checkpoint(model_file)
    res = run("calibrate", identity_dir, "--model", model_file, "--target-precision", 0.9, "--target-recall", 0.8,
              "--workers", 0)
    assert res.exit_code == 0, res.output
    after = load_checkpoint(model_file)
    assert after.fingerprint == before.fingerprint and after.calibration["target_precision"] == 0.9
    assert after.calibration["target_recall"] == 0.8
    res = run("dedup", "--index", idx, "--json")
    assert res.exit_code == 0, res.output
    expected = collection_margin(after.calibration, len(Store.open(idx))).margin
    assert json.loads(res.stdout)["margin"] == pytest.approx(expected, abs=1e-6)


def test_query_html_and_sheet_show_each_query_with_its_neighbours(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)[0].close()
    page, sheet = tmp_path / "q.html", tmp_path / "q.png"
    res = run("query", identity_dir / "id02", "--index", idx, "-k", 3, "--html", page, "--sheet", sheet)
    assert res.exit_code == 0, res.output
    sources = images_in(page.read_text())
    assert len(sources) == 6 * (1 + 3) and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert Image.open(sheet).size[1] > 6 * 96  # one row per query image


def test_dedup_html_marks_groups_and_refuses_against(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)[0].close()
    page = tmp_path / "d.html"
    res = run("dedup", "--index", idx, "--margin", 0.5, "--json", "--html", page)
    assert res.exit_code == 0, res.output
    groups = json.loads(res.stdout)["groups"]
    assert groups and len(images_in(page.read_text())) == sum(1 + len(g["members"]) for g in groups)
    res = run("dedup", "--index", idx, "--against", idx, "--margin", 0.5, "--html", page)
    assert res.exit_code == 2 and "--html" in res.stderr
