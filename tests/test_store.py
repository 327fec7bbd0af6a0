"""The store: searches match brute force, plain rows and vectors go in and out, crashes and misuse are survived."""

import json

import faiss
import numpy as np
import pytest
from conftest import DIM, assert_same_neighbours, brute_force, clustered

import siamsearch.index.ann as ann
from siamsearch.core.errors import (CorruptIndexError, IndexExistsError, ModelMismatchError, NotAnIndexError, StoreError,
                               UnsupportedFormatError)
from siamsearch.index.rows import NewRow
from siamsearch.index.store import Store

# ---- searching ----------------------------------------------------------------------------------


def test_store_search_and_range_search_are_euclidean_and_match_brute_force(tmp_path, new_store, vector_folder,
                                                                             sync_vectors):
    xb, xq = clustered(300), clustered(15, seed=1)
    store = new_store(vector_folder(tmp_path / "v", 300))
    sync_vectors(store, xb)
    rows = list(store.iter_rows())
    row_ids, row_vectors = np.array([r.id for r in rows]), xb[[int(r.path[1:5]) for r in rows]]

    dist, found = store.search(xq, 5)
    assert dist.dtype == np.float32 and found.dtype == np.int64
    assert_same_neighbours(dist, found, row_vectors, row_ids, xq, 5)

    radius = float(np.median(brute_force(row_vectors, row_ids, xq, 20)[0]))
    lims, rdist, rids = store.range_search(xq, radius)
    true_d, true_ids = brute_force(row_vectors, row_ids, xq, 300)
    for i in range(len(xq)):
        d, got = rdist[lims[i]:lims[i + 1]], set(rids[lims[i]:lims[i + 1]])
        assert np.all(np.diff(d) >= 0) and np.all(d < radius)
        surely_in = set(true_ids[i][true_d[i] < radius - 1e-4])
        maybe_in = set(true_ids[i][true_d[i] < radius + 1e-4])
        assert surely_in <= got <= maybe_in

    padded_d, padded_ids = store.search(xb[:1], 400)
    assert (padded_ids[0, 300:] == -1).all() and np.isinf(padded_d[0, 300:]).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_through_the_store_tune_delete_and_find_themselves(tmp_path, monkeypatch, kind, new_store,
                                                                            vector_folder, sync_vectors):
    monkeypatch.setitem(ann.MIN_TRAIN, "ivf", 200)
    xb = clustered(300)
    root = vector_folder(tmp_path / "v", 300)
    store = new_store(root, kind=kind)
    assert store.kind == "flat"  # every index starts flat; a sync lays out the kind
    sync_vectors(store, xb)
    assert store.kind == kind and store.approximate and store.info()["search"]["recall"] >= 0.95

    for i in range(0, 300, 30):
        (root / f"v{i:04d}.png").unlink()
    report = sync_vectors(store, xb)
    assert report.removed == 10 and len(store) == 290 == len(Store.open(store.path))
    ids, vectors = store.vectors()
    assert np.array_equal(ids, sorted(r.id for r in store.iter_rows()))
    _, found = store.search(vectors, 1)
    assert np.mean(found[:, 0] == ids) > 0.99


# ---- writing plain rows and vectors ------------------------------------------------------------------


def rows_for(names: list[str]) -> list[NewRow]:
    """Rows for files that need not exist: the store keeps what it is told."""
    return [NewRow(name, name.split("/")[0] if "/" in name else None, 100 + i, 10**9 * i, 8, 6)
            for i, name in enumerate(names)]


def test_add_and_remove_take_plain_rows_and_vectors(tmp_path, new_store):
    store = new_store(tmp_path)
    x = clustered(4)
    x[2, 0] = np.nan  # refused: a non-finite vector would poison every search
    with pytest.raises(RuntimeError, match="writing"):
        store.add(rows_for(["a/0.png"]), x[:1])
    with store.writing():
        ids = store.add(rows_for(["a/0.png", "a/1.png", "b/0.png", "top.png"]), x)
        assert ids[2] == -1 and list(ids[[0, 1, 3]]) == [1, 2, 3]
        with pytest.raises(ModelMismatchError, match="4-d|8-d"):
            store.add(rows_for(["c/0.png"]), np.ones((1, 4), np.float32))
        store.remove([ids[1]])
        assert list(store.add(rows_for(["a/1.png"]), x[1:2])) == [4]  # a removed id is not reused
    reopened = Store.open(store.path)
    assert [(r.id, r.path, r.identity, r.size, r.width) for r in reopened.iter_rows()] == [
        (1, "a/0.png", "a", 100, 8), (3, "top.png", None, 103, 8), (4, "a/1.png", "a", 100, 8)]
    assert reopened.identities() == 1 and reopened.info()["count"] == 3
    np.testing.assert_allclose(reopened.vectors([1, 3, 4])[1], x[[0, 3, 1]])


# ---- refusing misuse ----------------------------------------------------------------------------


def test_another_model_is_refused(photos, new_store):
    store = new_store(photos, fingerprint="0123456789abcdef")
    store.check_model("0123456789abcdef")
    with pytest.raises(ModelMismatchError, match="another model.*0123456789ab.*fedcba987654.*--rebuild"):
        store.check_model("fedcba9876543210")


def test_clear_errors_for_what_is_not_a_usable_index(photos, new_store):
    with pytest.raises(NotAnIndexError, match="not a siamsearch index"):
        Store.open(photos)
    store = new_store(photos)
    with pytest.raises(IndexExistsError):
        new_store(photos)
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(UnsupportedFormatError, match="upgrade siamsearch"):
        Store.open(store.path)
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    (store.path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CorruptIndexError, match="--rebuild"):
        Store.open(store.path)
    faiss.write_index(faiss.IndexLSH(DIM, 16), str(store.path / "index.faiss"))
    with pytest.raises(CorruptIndexError, match="unexpected FAISS index type IndexLSH.*--rebuild"):
        Store.open(store.path)
    assert issubclass(CorruptIndexError, StoreError)
    fresh = Store.create(store.path, dim=4, fingerprint="b" * 16, encoder={}, model_path="m.pt", root=photos,
                         overwrite=True)
    assert len(fresh) == 0 and fresh.dim == 4 and fresh.info()["model"] == "m.pt"


def test_a_reader_keeps_its_snapshot_while_a_writer_commits(tmp_path, new_store, vector_folder, sync_vectors):
    root, x = vector_folder(tmp_path / "v", 20), clustered(20)
    store = new_store(root)
    sync_vectors(store, x)
    reader = Store.open(store.path)  # e.g. query, between loading the index and reading its rows
    with store.writing():  # a writer commits: rows go, then their vectors, then new rows come
        store.remove([r.id for r in store.iter_rows()][:10])
        store.add(rows_for(["new.png"]), x[:1])
    _, found = reader.search(x, 5)
    assert [r.id for r in reader.rows(found[0])] == list(found[0])  # every id the reader found has its row
    assert len(reader) == 20 == len(list(reader.iter_rows()))
    assert len(Store.open(store.path)) == 11  # and a new reader sees the writer's commit


def test_a_file_system_that_cannot_lock_is_one_line_naming_the_index(tmp_path, monkeypatch):
    import errno

    import siamsearch.core.atomic as atomic
    from siamsearch.core.errors import StoreError
    from siamsearch.index.store import Store

    def no_flock(self, *args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(atomic.FileLock, "acquire", no_flock)
    with pytest.raises(StoreError, match="cannot lock files.*--index") as caught:
        Store.create(tmp_path / "idx", dim=4, fingerprint="a" * 16, encoder={}, model_path=None, root=tmp_path)
    assert str(tmp_path / "idx") in str(caught.value) and "\n" not in str(caught.value)
