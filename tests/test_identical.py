"""dedup --identical-only: byte-identical files from the stored content hashes, with no model and no vectors."""

import hashlib
import json
from pathlib import Path

import numpy as np
from conftest import run_cli as run

from siamsearch.index.rows import NewRow
from siamsearch.index.store import Store


def hashed_store(folder: Path) -> Store:
    """Six files: a.png = b/a.png = c.png (same bytes), d.png = e.png, f.png alone; f's row has no hash (older)."""
    root = folder / "images"
    contents = {"a.png": b"one" * 10, "b/a.png": b"one" * 10, "c.png": b"one" * 10, "d.png": b"two" * 7,
                "e.png": b"two" * 7, "f.png": b"one" * 10}
    rows = []
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = None if name == "f.png" else hashlib.sha256(data).hexdigest()
        rows.append(NewRow(name, None, len(data), path.stat().st_mtime_ns, 1, 1, digest))
    store = Store.create(folder / "index", dim=4, fingerprint="f" * 16, encoder={},
                         model_path=str(folder / "model.pt"), root=root)
    with store.writing():
        store.add(rows, np.eye(6, 4, dtype=np.float32))  # far apart: only the hashes can group them
    store.close()
    return store


def test_identical_files_group_without_the_model_or_faiss(tmp_path):
    store = hashed_store(tmp_path)
    (store.path / "index.faiss").unlink()  # neither the model (never written) nor the vectors are there
    res = run("dedup", "--index", store.path, "--identical-only", "--json", "--keep", "first")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    groups = {g["keep"]: [(m["path"], m["distance"], m["status"]) for m in g["members"]] for g in out["groups"]}
    assert groups == {"a.png": [("b/a.png", 0.0, "identical"), ("c.png", 0.0, "identical")],
                      "d.png": [("e.png", 0.0, "identical")]}
    assert out["unchecked"] == 1
    res = run("dedup", "--index", store.path, "--identical-only")
    assert res.exit_code == 0 and "1 file(s) indexed without a hash were not checked" in res.stdout


def test_identical_files_move_aside_and_come_back(tmp_path):
    store = hashed_store(tmp_path)
    dest, csv = tmp_path / "dups", tmp_path / "dups.csv"
    res = run("dedup", "--index", store.path, "--identical-only", "--keep", "first", "--move-to", dest, "--yes",
              "--csv", csv)
    assert res.exit_code == 0 and "moved 3 duplicate(s)" in res.stdout
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == ["b/a.png", "c.png", "e.png"]
    assert csv.read_text().count("identical") == 3
    res = run("undo", res.stdout.split("siamsearch undo ")[1].strip())
    assert res.exit_code == 0 and (store.root / "c.png").is_file()


def test_identical_only_refuses_a_margin(tmp_path):
    res = run("dedup", "--index", hashed_store(tmp_path).path, "--identical-only", "--margin", "0.1")
    assert res.exit_code == 2 and "--identical-only" in res.stderr


# ---- indexing embeds byte-identical files once ------------------------------------------------------


def embedded_paths(monkeypatch) -> list[Path]:
    """Record every file indexing hands to the encoder, in order."""
    import siamsearch.index.indexing as indexing

    real, seen = indexing.embed_batches, []

    def recording(model, pre, paths, **options):
        seen.extend(paths)
        yield from real(model, pre, paths, **options)

    monkeypatch.setattr(indexing, "embed_batches", recording)
    return seen


def test_identical_files_are_embedded_once_share_a_vector_and_dedup_says_identical(tmp_path, photos, model_file,
                                                                                    monkeypatch):
    from siamsearch.core.config import Runtime
    from siamsearch.index.indexing import index_folder

    original = photos / "id00/0.png"
    for copy in (photos / "copy/a.png", photos / "id01/b.png"):
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(original.read_bytes())
    (photos / "id02/empty.png").write_bytes(b"")  # two unreadable files with the same (no) bytes: both reported
    (photos / "id02/empty2.png").write_bytes(b"")
    seen = embedded_paths(monkeypatch)
    store, report = index_folder(photos, tmp_path / "idx", model_file, runtime=Runtime(workers=0))
    assert len(seen) == len(set(seen)) == 9 + 1 == report.embedded  # 9 distinct pictures and one empty file
    assert len({p.read_bytes() for p in seen}) == len(seen)  # never the same bytes twice
    assert report.added == 11 and sorted(f.path.name for f in report.failures) == ["empty.png", "empty2.png"]
    ids = {r.path: r.id for r in store.iter_rows()}
    vectors = store.vectors([ids["id00/0.png"], ids["copy/a.png"], ids["id01/b.png"]])[1]
    assert (vectors == vectors[0]).all()
    store.close()

    res = run("dedup", "--index", tmp_path / "idx", "--margin", "0.0001", "--keep", "first", "--json")
    assert res.exit_code == 0, res.output
    groups = {g["keep"]: [(m["path"], m["distance"], m["status"]) for m in g["members"]]
              for g in json.loads(res.stdout)["groups"]}
    assert groups["copy/a.png"] == [("id00/0.png", 0.0, "identical"), ("id01/b.png", 0.0, "identical")]

    seen.clear()  # a later run: a copy of an indexed file takes its stored vector
    (photos / "id02/again.png").write_bytes((photos / "id02/1.png").read_bytes())
    store, report = index_folder(photos, tmp_path / "idx", runtime=Runtime(workers=0))
    assert seen == [photos / "id02/empty.png"] and report.embedded == 1  # the unreadable file is tried again
    assert (report.added, report.unchanged) == (1, 11)
    ids = {r.path: r.id for r in store.iter_rows()}
    again, first = store.vectors([ids["id02/again.png"], ids["id02/1.png"]])[1]
    assert (again == first).all()
