"""Choosing files: include/exclude globs, the root's .siamsearchignore, patterns an index remembers, more formats."""

import json
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

from siamsearch.core.images import Selection, image_extensions, scan_images
from siamsearch.index.indexing import index_folder
from siamsearch.index.store import Store


def _tree(root: Path, names: list[str]) -> Path:
    """A folder of tiny PNG-encoded images (a name's extension only says how it is listed)."""
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), i * 20).save(root / name, format="JPEG" if "jp" in name or "jfif" in name else "PNG")
    return root


def _found(root: Path, selection: Selection = Selection()) -> list[str]:
    return [p.relative_to(root).as_posix() for p in scan_images(root, selection).images]


NAMES = ["a.jpg", "b.png", "raw/c.jpg", "raw/deep/d.jpg", "keep/e.png"]


def test_include_and_exclude_globs_match_the_relative_path(tmp_path):
    root = _tree(tmp_path, NAMES)
    assert _found(root, Selection(include=("*.jpg",))) == ["a.jpg", "raw/c.jpg", "raw/deep/d.jpg"]
    assert _found(root, Selection(exclude=("raw/**",))) == ["a.jpg", "b.png", "keep/e.png"]
    assert _found(root, Selection(("*.jpg",), ("raw/**",))) == ["a.jpg"]


def test_excluded_folders_are_not_looked_into(tmp_path):
    root = _tree(tmp_path, ["a.png"])
    (root / "raw").mkdir()
    (root / "raw" / "broken.jpg").symlink_to(root / "nowhere.jpg")
    assert len(scan_images(root).failures) == 1
    scan = scan_images(root, Selection(exclude=("raw/",)))
    assert scan.failures == [] and scan.unread == []


def test_siamsearchignore_uses_gitignore_syntax(tmp_path):
    root = _tree(tmp_path, NAMES)
    (root / ".siamsearchignore").write_text("# drafts\nraw/\n*.png\n!keep/e.png\n")
    assert _found(root) == ["a.jpg", "keep/e.png"]
    assert _found(root, Selection(exclude=("a.jpg",))) == ["keep/e.png"]


def test_index_remembers_its_patterns_and_keeps_the_others(tmp_path, model_file):
    root = _tree(tmp_path / "photos", NAMES)
    store, report = index_folder(root, tmp_path / "idx", model_file, selection=Selection(exclude=("raw/**",)))
    assert report.added == 3 and store.selection == Selection((), ("raw/**",))
    store.close()
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["include"] == [] and manifest["exclude"] == ["raw/**"]
    _tree(root, ["raw/new.jpg", "z.png"])
    store, report = index_folder(root, tmp_path / "idx")  # no patterns: the recorded ones, nothing pruned
    assert (report.added, report.removed, report.unchanged) == (1, 0, 3)
    assert sorted(row.path for row in store.iter_rows()) == ["a.jpg", "b.png", "keep/e.png", "z.png"]
    store.close()


def test_cli_index_include_exclude_and_remembered(tmp_path, model_file):
    root = _tree(tmp_path / "photos", NAMES)
    idx = tmp_path / "idx"
    result = run_cli("index", root, "--model", model_file, "--index", idx, "--include", "*.jpg",
                     "--exclude", "raw/deep/**", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == 2
    result = run_cli("index", root, "--index", idx, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["count"] == 2
    assert Store.open(idx).selection == Selection(("*.jpg",), ("raw/deep/**",))


def test_a_pattern_refused_for_pruning_is_not_kept_and_info_shows_the_patterns(tmp_path, model_file):
    root = _tree(tmp_path / "photos", NAMES)
    idx = tmp_path / "idx"
    assert run_cli("index", root, "--model", model_file, "--index", idx, "--exclude", "raw/**").exit_code == 0
    typo = run_cli("index", root, "--index", idx, "--exclude", "*")  # would drop every row
    assert typo.exit_code != 0 and Store.open(idx).selection == Selection((), ("raw/**",))
    again = run_cli("index", root, "--index", idx, "--json")  # a plain run is not refused by the typo
    assert again.exit_code == 0 and json.loads(again.output)["count"] == 3
    assert json.loads(run_cli("info", "--index", idx, "--json").output)["exclude"] == ["raw/**"]
    assert "raw/**" in run_cli("info", "--index", idx).output


@pytest.mark.parametrize("ext", [".jfif", ".jpe"])
def test_jfif_and_jpe_are_jpeg_images(tmp_path, model_file, ext):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / f"a{ext}", format="JPEG")
    store, report = index_folder(root, tmp_path / "idx", model_file)
    assert report.added == 1 and not report.failures
    store.close()


@pytest.mark.parametrize("ext,fmt", [(".heic", "HEIF"), (".avif", "AVIF")])
def test_heic_and_avif_index_when_a_plugin_decodes_them(tmp_path, model_file, ext, fmt):
    if ext not in image_extensions():
        pytest.skip(f"no {fmt} decoder installed (pip install 'siamsearch[formats]')")
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(root / f"a{ext}", format=fmt)
    store, report = index_folder(root, tmp_path / "idx", model_file)
    assert report.added == 1 and not report.failures
    assert [row.path for row in store.iter_rows()] == [f"a{ext}"]
    store.close()


def test_train_uses_only_the_files_the_patterns_keep(identity_dir, tmp_path):
    import json

    from conftest import run_cli

    res = run_cli("train", identity_dir, "--out", tmp_path / "m.pt", "--epochs", 1, "--image-size", 32, "--dim", 8,
                  "-P", 4, "-K", 2, "--val-fraction", 0, "--exclude", "id1*", "--json")
    assert res.exit_code == 0, res.output
    assert "60 training images" in res.output  # id00-id09, 6 each: id10-id15 left out
    assert json.loads(res.stdout)["best"]["epoch"] == 1


def test_eval_and_calibrate_use_only_the_files_the_patterns_keep(identity_dir, model_file):
    res = run_cli("eval", identity_dir, "--model", model_file, "--exclude", "id1*", "--include", "[0-3].png",
                  "--episodes", 5, "--workers", 0, "--json")
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["counts"]
    assert (counts["images"], counts["identities"]) == (40, 10)  # id00-id09, images 0-3 of each
    res = run_cli("calibrate", identity_dir, "--model", model_file, "--include", "id0[0-4]/**", "--workers", 0,
                  "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pairs"] == 5 * 15 * 2  # 5 identities of 6: 75 same pairs, as many different
