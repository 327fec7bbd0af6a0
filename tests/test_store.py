"""The store: searches match brute force, syncs are incremental and cheap to commit, crashes and misuse are survived."""

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

import siamsearch.ann as ann
import siamsearch.store as store_mod
from conftest import add_bad_files, make_identities
from siamsearch.images import BadImageError, Failure, find_images, load_image
from siamsearch.store import (CorruptIndexError, IndexExistsError, ModelMismatchError, NotAnIndexError, Store,
                              StoreError, StoreLockedError, UnsupportedFormatError)
from test_ann import DIM, assert_same_neighbours, brute_force, clustered


@dataclass
class FakeResult:
    """The four attributes of siamsearch.embed.EmbedResult."""

    paths: list[Path] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), np.float32))
    sizes: list[tuple[int, int]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class FakeEmbed:
    """Decodes with PIL; the vector is a unit vector seeded by the file's bytes. Records what it saw."""

    def __init__(self, interrupt_on_call: int | None = None) -> None:
        self.calls: list[list[Path]] = []
        self.interrupt_on_call = interrupt_on_call

    @property
    def seen(self) -> list[Path]:
        return [p for call in self.calls for p in call]

    @staticmethod
    def vector_of(path: Path) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    def __call__(self, paths):
        self.calls.append(list(paths))
        if len(self.calls) == self.interrupt_on_call:
            raise KeyboardInterrupt
        out = FakeResult()
        for p in paths:
            try:
                out.sizes.append(load_image(p, channels=1).size)
            except BadImageError as exc:
                out.failures.append(Failure(p, exc.reason))
                continue
            out.paths.append(p)
        out.vectors = np.stack([self.vector_of(p) for p in out.paths]) if out.paths else out.vectors
        return out


class VectorEmbed:
    """File v0042.png embeds to vectors[42]: sync a store with chosen vectors."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def __call__(self, paths):
        rows = [int(p.stem[1:]) for p in paths]
        return FakeResult(list(paths), self.vectors[rows], [(1, 1)] * len(rows))


def vector_folder(root: Path, n: int) -> Path:
    """n tiny files v0000.png ... for VectorEmbed, which never decodes them."""
    root.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    for i in range(n):
        (root / f"v{i:04d}.png").write_bytes(buf.getvalue())
    return root


def count_index_writes(monkeypatch) -> list[int]:
    """Record the vector count of every index.faiss the store writes, in order."""
    real, written = store_mod._write_index, []

    def counting(folder, index):
        real(folder, index)
        written.append(index.ntotal)

    monkeypatch.setattr(store_mod, "_write_index", counting)
    return written


def new_store(tmp_path: Path, root: Path, kind: str = "auto", fingerprint: str = "a" * 16) -> Store:
    return Store.create(tmp_path / "index", dim=DIM, fingerprint=fingerprint, encoder={"dim": DIM},
                        model_path=None, root=root, index_kind=kind)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """3 identity folders x 3 images of 8x8 gratings."""
    return make_identities(tmp_path / "photos", n_ids=3, per_id=3, size=8)


# ---- searching ----------------------------------------------------------------------------------


def test_store_search_and_range_search_are_euclidean_and_match_brute_force(tmp_path):
    xb, xq = clustered(300), clustered(15, seed=1)
    store = new_store(tmp_path, vector_folder(tmp_path / "v", 300))
    store.sync(tmp_path / "v", VectorEmbed(xb))
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
def test_approximate_kinds_through_the_store_tune_delete_and_find_themselves(tmp_path, monkeypatch, kind):
    monkeypatch.setitem(ann.MIN_TRAIN, "ivf", 200)
    xb = clustered(300)
    root = vector_folder(tmp_path / "v", 300)
    store = new_store(tmp_path, root, kind=kind)
    assert store.kind == "flat"  # every index starts flat; a sync lays out the kind
    store.sync(root, VectorEmbed(xb))
    assert store.kind == kind and store.approximate and store.info()["search"]["recall"] >= 0.95

    for i in range(0, 300, 30):
        (root / f"v{i:04d}.png").unlink()
    report = store.sync(root, VectorEmbed(xb))
    assert report.removed == 10 and len(store) == 290 == len(Store.open(store.path))
    ids, vectors = store.vectors()
    assert np.array_equal(ids, sorted(r.id for r in store.iter_rows()))
    _, found = store.search(vectors, 1)
    assert np.mean(found[:, 0] == ids) > 0.99


# ---- syncing ------------------------------------------------------------------------------------


def test_sync_adds_changes_and_removes_exactly_what_changed(tmp_path, photos):
    store = new_store(tmp_path, photos)
    report = store.sync(photos, FakeEmbed())
    assert (report.added, report.updated, report.removed, report.unchanged) == (9, 0, 0, 0)
    before = {row.path: row for row in store.iter_rows()}
    first = before["id01/2.png"]
    assert first.identity == "id01" and (first.width, first.height) == (8, 8) and first.abspath == photos / "id01/2.png"

    changed, gone, new = photos / "id01/0.png", photos / "id02/2.png", photos / "new.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(changed)
    os.utime(changed, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    gone.unlink()
    Image.new("RGB", (6, 4), "red").save(new)
    embed = FakeEmbed()
    report = store.sync(photos, embed)

    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 7)
    assert sorted(embed.seen) == sorted([changed, new])
    after = {row.path: row for row in store.iter_rows()}
    assert set(after) == set(before) - {"id02/2.png"} | {"new.png"}
    assert all(after[p].id == before[p].id for p in after if p not in ("id01/0.png", "new.png"))
    assert after["id01/0.png"].id > max(r.id for r in before.values())  # the deleted last id is not reused
    assert after["new.png"].identity is None and (after["new.png"].width, after["new.png"].height) == (6, 4)
    _, vec = store.vectors([after["id01/0.png"].id])
    np.testing.assert_allclose(vec[0], FakeEmbed.vector_of(changed))
    dist, found = store.search(vec, 1)
    assert found[0, 0] == after["id01/0.png"].id and dist[0, 0] < 1e-3

    embed = FakeEmbed()
    report = store.sync(photos, embed)
    assert embed.calls == [] and report.unchanged == 9 and report.added == report.removed == 0
    reopened = Store.open(store.path)
    assert len(reopened) == 9 and reopened.info()["count"] == 9 and reopened.rows([first.id])[0] == first


def test_interrupted_sync_keeps_committed_chunks_and_resumes(tmp_path, photos):
    store = new_store(tmp_path, photos)
    with pytest.raises(KeyboardInterrupt):
        store.sync(photos, FakeEmbed(interrupt_on_call=2), commit_every=4)
    reopened = Store.open(store.path)
    done = [r.abspath for r in reopened.iter_rows()]
    assert len(reopened) == 4 and done == find_images(photos)[:4]
    embed = FakeEmbed()
    report = reopened.sync(photos, embed, commit_every=4)
    assert report.added == 5 and len(reopened) == 9 and set(embed.seen).isdisjoint(done)


def test_chunks_grow_with_the_index_so_a_first_load_writes_linear_bytes(tmp_path, monkeypatch):
    n, every = 2000, 10  # fixed chunks of 10 would write index.faiss 200 times, 201,000 vectors in all
    root = vector_folder(tmp_path / "v", n)
    store = new_store(tmp_path, root)
    written = count_index_writes(monkeypatch)
    store.sync(root, VectorEmbed(clustered(n)), commit_every=every)
    assert len(store) == n == written[-1]
    chunks, stored = np.diff([0, *written]), np.array([0, *written[:-1]])  # stored: committed before each chunk
    want = np.maximum(every, (store_mod.COMMIT_GROWTH * stored).astype(int))
    assert np.array_equal(chunks[:-1], want[:-1]) and 0 < chunks[-1] <= want[-1]
    assert len(written) < 50 and sum(written) < 12 * n


def test_error_after_index_write_rolls_back_to_the_committed_rows(tmp_path, photos, monkeypatch):
    real, calls = store_mod._write_index, []

    def crash_on_second_chunk(folder, index):
        real(folder, index)
        calls.append(index.ntotal)
        if len(calls) == 2:
            raise OSError("disk on fire")

    store = new_store(tmp_path, photos)
    monkeypatch.setattr(store_mod, "_write_index", crash_on_second_chunk)
    with pytest.raises(OSError):
        store.sync(photos, FakeEmbed(), commit_every=4)
    assert calls[:2] == [4, 8] and len(store) == 4 and len(list(store.iter_rows())) == 4
    monkeypatch.setattr(store_mod, "_write_index", real)
    embed = FakeEmbed()
    assert store.sync(photos, embed, commit_every=4).added == 5 and len(embed.seen) == 5


def test_open_repairs_vectors_without_rows_and_rows_without_vectors(tmp_path, photos):
    store = new_store(tmp_path, photos)
    store.sync(photos, FakeEmbed())
    nine = (store.path / "index.faiss").read_bytes()
    for p in sorted(photos.glob("id02/*.png")):
        p.unlink()
    store.sync(photos, FakeEmbed())
    six = (store.path / "index.faiss").read_bytes()

    (store.path / "index.faiss").write_bytes(nine)  # as if killed after the delete's commit
    assert len(Store.open(store.path)) == 6

    make_identities(tmp_path / "more", n_ids=1, per_id=3, size=8, seed=5)
    (tmp_path / "more/id00").rename(photos / "id02")
    store.sync(photos, FakeEmbed())
    (store.path / "index.faiss").write_bytes(six)  # an older index.faiss: 3 rows have no vector
    reopened = Store.open(store.path)
    assert len(reopened) == 6
    embed = FakeEmbed()
    reopened.sync(photos, embed)
    assert sorted(embed.seen) == sorted(photos.glob("id02/*.png")) and len(reopened) == 9
    assert len(list(reopened.iter_rows())) == 9


def test_bad_files_are_reported_and_do_not_stop_the_run(tmp_path, photos):
    bad = add_bad_files(photos)
    store = new_store(tmp_path, photos)
    report = store.sync(photos, FakeEmbed(), commit_every=2)
    assert report.added == 9 and sorted(f.path for f in report.failures) == sorted(bad)
    assert len(store) == 9 and not {r.abspath for r in store.iter_rows()} & set(bad)


# ---- refusing misuse ----------------------------------------------------------------------------


def test_another_model_is_refused(tmp_path, photos):
    store = new_store(tmp_path, photos, fingerprint="0123456789abcdef")
    store.check_model("0123456789abcdef")
    with pytest.raises(ModelMismatchError, match="another model.*0123456789ab.*fedcba987654.*--rebuild"):
        store.check_model("fedcba9876543210")


def test_a_second_writer_is_locked_out(tmp_path, photos):
    store = new_store(tmp_path, photos)
    other = Store.open(store.path)

    def embed_while_other_writes(paths):
        other.sync(photos, FakeEmbed())

    with pytest.raises(StoreLockedError, match="another siamsearch process is writing"):
        store.sync(photos, embed_while_other_writes)
    assert store.sync(photos, FakeEmbed()).added == 9  # the lock is released after a failed run


def test_clear_errors_for_what_is_not_a_usable_index(tmp_path, photos):
    with pytest.raises(NotAnIndexError, match="not a siamsearch index"):
        Store.open(photos)
    store = new_store(tmp_path, photos)
    with pytest.raises(IndexExistsError):
        new_store(tmp_path, photos)
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
