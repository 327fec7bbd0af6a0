"""index / query / info end to end through the CLI, on a tiny real model and real files."""

import json
import shutil

import pytest
import torch
from conftest import add_bad_files
from conftest import run_cli as run

from siamsearch.core.checkpoint import load_checkpoint, save_model
from siamsearch.core.config import EncoderConfig
from siamsearch.index.indexing import index_folder
from siamsearch.core.model import build_encoder
from siamsearch.index.search import Searcher
from siamsearch.core.errors import ModelMismatchError
from siamsearch.index.store import Store


def test_index_query_json_follows_the_schema(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    res = run("index", identity_dir, "--model", model_file, "--index", idx, "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "96 images" in res.output and "added 96" in res.output
    query = identity_dir / "id03" / "2.png"
    res = run("query", query, "--index", idx, "-k", "3", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d["query"] for d in data] == [str(query)]
    hits = data[0]["neighbors"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) == {"rank", "path", "distance", "identity"}
    assert hits[0]["path"] == "id03/2.png" and hits[0]["distance"] == pytest.approx(0, abs=1e-4)
    assert hits[0]["identity"] == "id03"
    assert all(a["distance"] <= b["distance"] for a, b in zip(hits, hits[1:]))


def test_exclude_self_and_margin_and_folder_queries(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    searcher = Searcher.open(idx)
    results, failures = searcher.query_images([identity_dir / "id01"], k=2, exclude_self=True)
    assert len(results) == 6 and not failures
    for r in results:
        assert all(n.path != r.query.relative_to(identity_dir).as_posix() for n in r.neighbors)
        assert len(r.neighbors) == 2
    full, _ = searcher.query_images([identity_dir / "id01" / "0.png"], k=10)
    cut = full[0].neighbors[4].distance
    near, _ = searcher.query_images([identity_dir / "id01" / "0.png"], k=10, margin=cut)
    assert near[0].neighbors == [n for n in full[0].neighbors if n.distance <= cut]
    assert near[0].neighbors[0].path == "id01/0.png" and len(near[0].neighbors) < 10


def test_reindex_is_incremental(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    shutil.rmtree(identity_dir / "id00")
    (identity_dir / "id01" / "0.png").rename(identity_dir / "id01" / "moved.png")
    store, report = index_folder(identity_dir, idx)  # the model comes from the manifest
    assert (report.added, report.removed, report.unchanged) == (1, 7, 89)
    assert len(store) == 90


def test_a_different_model_is_refused(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_model(other, build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)))
    with pytest.raises(ModelMismatchError):
        index_folder(identity_dir, idx, other)
    res = run("query", identity_dir / "id00" / "0.png", "--index", idx, "--model", other)
    assert res.exit_code == 3 and "another model" in res.output and "--rebuild" in res.output
    res = run("index", identity_dir, "--index", idx, "--model", other, "--rebuild", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert Store.open(idx).fingerprint == load_checkpoint(other).fingerprint


def test_bad_files_are_skipped_and_a_bad_query_fails_in_one_line(identity_dir, model_file, tmp_path):
    bad = add_bad_files(identity_dir)
    idx = tmp_path / "idx"
    res = run("index", identity_dir, "--model", model_file, "--index", idx, "--workers", "0")
    assert res.exit_code == 1 and "skipped 3" in res.output
    res = run("query", bad[0], "--index", idx)
    assert res.exit_code == 1 and f"cannot read {bad[0]}: empty file" in res.output


def test_info_and_errors(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    res = run("info", "--index", idx, "--json")
    data = json.loads(res.stdout)
    assert data["count"] == 96 and data["identities"] == 16 and data["dim"] == 16
    res = run("info", "--index", tmp_path / "nothing")
    assert res.exit_code == 2 and "error:" in res.output
    res = run("index", identity_dir, "--index", tmp_path / "new", "--model", tmp_path / "missing.pt")
    assert res.exit_code == 2 and "no model file" in res.output and not (tmp_path / "new" / "manifest.json").exists()


@pytest.mark.parametrize("damage", ["truncated index.faiss", "deleted rows.sqlite", "garbage manifest.json"])
def test_rebuild_repairs_any_broken_index(identity_dir, model_file, tmp_path, damage):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    if damage.startswith("truncated"):
        (idx / "index.faiss").write_bytes((idx / "index.faiss").read_bytes()[:100])
    elif damage.startswith("deleted"):
        (idx / "rows.sqlite").unlink()
    else:
        (idx / "manifest.json").write_text('{"format_version": 1}')
    res = run("index", identity_dir, "--index", idx, "--model", model_file, "--workers", "0")
    assert res.exit_code == 2 and "--rebuild" in res.output
    res = run("index", identity_dir, "--index", idx, "--model", model_file, "--rebuild", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert len(Store.open(idx)) == 96


def test_rebuild_refuses_what_is_not_an_index_folder(identity_dir, model_file, tmp_path):
    photos = sorted(p.name for p in (identity_dir / "id00").iterdir())
    res = run("index", identity_dir, "--index", identity_dir / "id00", "--model", model_file, "--rebuild")
    assert res.exit_code == 2 and "is not a siamsearch index folder" in res.output
    assert sorted(p.name for p in (identity_dir / "id00").iterdir()) == photos  # nothing written there
    (tmp_path / "idx").write_text("a file")
    res = run("index", identity_dir, "--index", tmp_path / "idx", "--model", model_file)
    assert res.exit_code == 2 and "is a file, not an index folder" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_index_prune_and_verify_flags(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    for folder in sorted(identity_dir.iterdir())[:10]:
        shutil.rmtree(folder)
    res = run("index", identity_dir, "--index", idx, "--workers", "0")
    assert res.exit_code == 3 and "--prune" in res.output and len(Store.open(idx)) == 96
    res = run("index", identity_dir, "--index", idx, "--workers", "0", "--prune", "--verify")
    assert res.exit_code == 0 and "removed 60, unchanged 36" in res.output, res.output
