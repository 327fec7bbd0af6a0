"""Indexing: syncs are incremental, cheap to commit and stream every file through one embedding pass; crashes are survived."""

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import DIM, add_bad_files, clustered, make_identities
from PIL import Image

import siamsearch.core.decoding as decoding
import siamsearch.core.embed as embed_mod
import siamsearch.index.indexing as indexing
import siamsearch.index.store as store_mod
from siamsearch.core.config import Runtime
from siamsearch.core.embed import EmbedResult
from siamsearch.core.errors import PruneRefusedError, StoreLockedError
from siamsearch.core.images import BadImageError, Failure, find_images, load_image
from siamsearch.index.indexing import index_folder, sync
from siamsearch.index.store import Store


class FakeEmbed:
    """An embedding stream that decodes with PIL; a vector is a unit vector seeded by the file's bytes.

    Records the files each call asked for; interrupt_on_batch raises KeyboardInterrupt instead of that batch.
    """

    def __init__(self, interrupt_on_batch: int | None = None, batch_size: int = 1) -> None:
        self.calls: list[list[Path]] = []
        self.interrupt_on_batch, self.batch_size = interrupt_on_batch, batch_size

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
        for number, i in enumerate(range(0, len(paths), self.batch_size), start=1):
            if number == self.interrupt_on_batch:
                raise KeyboardInterrupt
            yield self.embed(paths[i:i + self.batch_size])

    def embed(self, paths) -> EmbedResult:
        out = EmbedResult(vectors=np.zeros((0, DIM), np.float32))
        for p in paths:
            try:
                out.sizes.append(load_image(p, channels=1).size)
            except BadImageError as exc:
                out.failures.append(Failure(p, exc.reason))
                continue
            out.paths.append(p)
        out.vectors = np.stack([self.vector_of(p) for p in out.paths]) if out.paths else out.vectors
        return out


def count_index_writes(monkeypatch) -> list[int]:
    """Record the vector count of every index.faiss the store writes, in order."""
    real, written = store_mod.write_index, []

    def counting(folder, index):
        real(folder, index)
        written.append(index.ntotal)

    monkeypatch.setattr(store_mod, "write_index", counting)
    return written



# ---- syncing ------------------------------------------------------------------------------------


def test_sync_adds_changes_and_removes_exactly_what_changed(tmp_path, photos, new_store):
    store = new_store(photos)
    report = sync(store, FakeEmbed())
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
    report = sync(store, embed)

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
    report = sync(store, embed)
    assert embed.calls == [] and report.unchanged == 9 and report.added == report.removed == 0
    reopened = Store.open(store.path)
    assert len(reopened) == 9 and reopened.info()["count"] == 9 and reopened.rows([first.id])[0] == first


def test_interrupted_sync_keeps_committed_chunks_and_resumes(tmp_path, photos, new_store):
    store = new_store(photos)
    with pytest.raises(KeyboardInterrupt):
        sync(store, FakeEmbed(interrupt_on_batch=5), commit_every=4)
    reopened = Store.open(store.path)
    done = [r.abspath for r in reopened.iter_rows()]
    assert len(reopened) == 4 and done == find_images(photos)[:4]
    embed = FakeEmbed()
    report = sync(reopened, embed, commit_every=4)
    assert report.added == 5 and len(reopened) == 9 and set(embed.seen).isdisjoint(done)


def test_chunks_grow_with_the_index_so_a_first_load_writes_linear_bytes(tmp_path, monkeypatch, new_store,
                                                                        vector_folder, sync_vectors):
    n, every = 2000, 10  # fixed chunks of 10 would write index.faiss 200 times, 201,000 vectors in all
    root = vector_folder(tmp_path / "v", n)
    store = new_store(root)
    written = count_index_writes(monkeypatch)
    sync_vectors(store, clustered(n), commit_every=every)
    assert len(store) == n == written[-1]
    chunks, stored = np.diff([0, *written]), np.array([0, *written[:-1]])  # stored: committed before each chunk
    want = np.maximum(every, (indexing.COMMIT_GROWTH * stored).astype(int))
    assert np.array_equal(chunks[:-1], want[:-1]) and 0 < chunks[-1] <= want[-1]
    assert len(written) < 50 and sum(written) < 12 * n


def test_error_after_index_write_rolls_back_to_the_committed_rows(tmp_path, photos, monkeypatch, new_store):
    real, calls = store_mod.write_index, []

    def crash_on_second_chunk(folder, index):
        real(folder, index)
        calls.append(index.ntotal)
        if len(calls) == 2:
            raise OSError("disk on fire")

    store = new_store(photos)
    monkeypatch.setattr(store_mod, "write_index", crash_on_second_chunk)
    with pytest.raises(OSError):
        sync(store, FakeEmbed(), commit_every=4)
    assert calls[:2] == [4, 8] and len(store) == 4 and len(list(store.iter_rows())) == 4
    monkeypatch.setattr(store_mod, "write_index", real)
    embed = FakeEmbed()
    assert sync(store, embed, commit_every=4).added == 5 and len(embed.seen) == 5


def test_open_repairs_vectors_without_rows_and_rows_without_vectors(tmp_path, photos, new_store):
    store = new_store(photos)
    sync(store, FakeEmbed())
    nine = (store.path / "index.faiss").read_bytes()
    for p in sorted(photos.glob("id02/*.png")):
        p.unlink()
    sync(store, FakeEmbed())
    six = (store.path / "index.faiss").read_bytes()

    (store.path / "index.faiss").write_bytes(nine)  # as if killed after the delete's commit
    assert len(Store.open(store.path)) == 6

    make_identities(tmp_path / "more", n_ids=1, per_id=3, size=8, seed=5)
    (tmp_path / "more/id00").rename(photos / "id02")
    sync(store, FakeEmbed())
    (store.path / "index.faiss").write_bytes(six)  # an older index.faiss: 3 rows have no vector
    reopened = Store.open(store.path)
    assert len(reopened) == 6
    embed = FakeEmbed()
    sync(reopened, embed)
    assert sorted(embed.seen) == sorted(photos.glob("id02/*.png")) and len(reopened) == 9
    assert len(list(reopened.iter_rows())) == 9


def test_bad_files_are_reported_and_do_not_stop_the_run(tmp_path, photos, new_store):
    bad = add_bad_files(photos)
    store = new_store(photos)
    report = sync(store, FakeEmbed(), commit_every=2)
    assert report.added == 9 and sorted(f.path for f in report.failures) == sorted(bad)
    assert len(store) == 9 and not {r.abspath for r in store.iter_rows()} & set(bad)


def test_a_second_writer_is_locked_out(tmp_path, photos, new_store):
    store = new_store(photos)
    other = Store.open(store.path)

    def embed_while_other_writes(paths):
        sync(other, FakeEmbed())

    with pytest.raises(StoreLockedError, match="another siamsearch process is writing"):
        sync(store, embed_while_other_writes)
    assert sync(store, FakeEmbed()).added == 9  # the lock is released after a failed run




def test_a_run_of_several_chunks_embeds_in_one_stream_with_one_worker_pool(identity_dir, model_file, tmp_path,
                                                                           monkeypatch):
    streams, loaders, real_loader = [], [], decoding.DataLoader

    def counting_stream(*args, **kwargs):
        streams.append(len(args[2]))
        yield from embed_mod.embed_batches(*args, **kwargs)

    def counting_loader(*args, **kwargs):
        loaders.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(indexing, "embed_batches", counting_stream)
    monkeypatch.setattr(decoding, "DataLoader", counting_loader)
    written = count_index_writes(monkeypatch)
    progress = []
    store, report = index_folder(identity_dir, tmp_path / "idx", model_file, commit_every=10,
                                 runtime=Runtime(workers=1, batch_size=7), progress=lambda *p: progress.append(p))
    assert report.added == 96 == len(store) and len(written) >= 5  # chunks of 10 or more: several commits
    assert streams == [96] and loaders == [1]  # one stream, one DataLoader (and worker pool) for the run
    assert progress[0] == (0, 96) and progress[-1] == (96, 96) and len(progress) == 1 + 14  # 14 batches of 7


# ---- files that may only be out of sight, odd names, content changes ------------------------------


def test_an_empty_or_partly_unreadable_root_does_not_wipe_the_index(tmp_path, photos, new_store, monkeypatch):
    store = new_store(photos)
    sync(store, FakeEmbed())
    moved = tmp_path / "unmounted"
    photos.rename(moved)
    photos.mkdir()  # an empty mount point
    with pytest.raises(PruneRefusedError, match="not removing 9 of 9 .*holds no images.*--prune"):
        sync(store, FakeEmbed())
    assert len(Store.open(store.path)) == 9
    for p in moved.iterdir():
        p.rename(photos / p.name)
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: _refuse(p, "id01") or real_scandir(p))
    with pytest.raises(PruneRefusedError, match="id01 could not be read"):
        sync(store, FakeEmbed())
    monkeypatch.setattr(os, "scandir", real_scandir)
    for p in photos.glob("id0[01]/*.png"):
        p.unlink()
    with pytest.raises(PruneRefusedError, match="more than 50% of the indexed files are missing"):
        sync(store, FakeEmbed())
    assert len(store) == 9
    report = sync(store, FakeEmbed(), prune=True)
    assert report.removed == 6 and len(store) == 3


def _refuse(path, name):
    """Raise PermissionError when listing a folder called name, as an unreadable folder would."""
    if Path(path).name == name:
        raise PermissionError(13, "Permission denied")


def test_a_name_that_is_not_utf8_is_a_failure_and_the_run_goes_on(tmp_path, photos, new_store):
    bad = Path(os.fsdecode(os.fsencode(photos / "id00") + b"/bad\xff.png"))
    bad.write_bytes((photos / "id00" / "0.png").read_bytes())
    store = new_store(photos)
    for _ in range(2):  # and again: the next run is not stuck on it
        report = sync(store, FakeEmbed(), commit_every=1)
        assert [(f.path, f.reason) for f in report.failures] == [(bad, "file name is not valid UTF-8; rename it")]
        assert len(store) == 9
    assert report.unchanged == 9


def test_unreadable_entries_under_the_root_are_counted_as_failures(tmp_path, photos, new_store):
    os.mkfifo(photos / "pipe.jpg")
    (photos / "gone.png").symlink_to(photos / "nowhere.png")
    elsewhere = make_identities(tmp_path / "elsewhere", n_ids=1, per_id=2, size=8, seed=3)
    (photos / "linked").symlink_to(elsewhere / "id00", target_is_directory=True)
    report = sync(new_store(photos), FakeEmbed())
    assert report.added == 11
    assert sorted((f.path.name, f.reason) for f in report.failures) == [("gone.png", "broken symbolic link"),
                                                                        ("pipe.jpg", "not a regular file")]


def test_verify_re_embeds_content_changed_under_the_same_stamp(tmp_path, photos, new_store):
    store = new_store(photos)
    sync(store, FakeEmbed())
    rows = {r.path: r for r in store.iter_rows()}
    target, other = photos / "id00/0.png", photos / "id01/0.png"
    assert rows["id00/0.png"].sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    st = target.stat()
    target.write_bytes(other.read_bytes()[:st.st_size].ljust(st.st_size, b"\0"))  # cp -p: same size and mtime
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sync(store, FakeEmbed()).unchanged == 9  # the stamp alone cannot tell
    embed = FakeEmbed()
    report = sync(store, embed, verify=True)
    assert embed.seen == [target] and (report.updated, report.unchanged) == (1, 8)
    assert {r.path: r for r in store.iter_rows()}["id00/0.png"].sha256 == hashlib.sha256(target.read_bytes()).hexdigest()


def test_an_index_without_hashes_still_opens_and_verify_fills_them_in(tmp_path, photos, new_store):
    store = new_store(photos)
    sync(store, FakeEmbed())
    store.close()
    db = sqlite3.connect(store.path / "rows.sqlite")  # as an older siamsearch wrote it
    db.execute("ALTER TABLE images DROP COLUMN sha256")
    db.commit()
    db.close()
    old = Store.open(store.path)
    assert len(old) == 9 and all(r.sha256 is None for r in old.iter_rows())
    assert sync(old, FakeEmbed()).unchanged == 9  # a writer adds the column; unknown hashes stay unknown
    embed = FakeEmbed()
    assert sync(old, embed, verify=True).updated == 9 and len(embed.seen) == 9  # nothing to verify against
    assert all(r.sha256 for r in Store.open(store.path).iter_rows())


@pytest.mark.parametrize("failure", ["index.faiss", "rows.sqlite"])
def test_a_full_disk_is_one_line_and_leaves_the_index_as_it_was(identity_dir, model_file, tmp_path, monkeypatch,
                                                                 failure):
    import sqlite3

    from conftest import run_cli

    from siamsearch.index import rows

    from siamsearch.index import store

    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)[0].close()
    (identity_dir / "id00" / "new.png").write_bytes((identity_dir / "id01" / "0.png").read_bytes() + b"\0")

    def full(*args):
        if failure == "index.faiss":
            raise RuntimeError("Error in faiss::write_index: fwrite failed: No space left on device")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.faiss if failure == "index.faiss" else rows.RowTable,
                        "write_index" if failure == "index.faiss" else "commit", full)
    res = run_cli("index", identity_dir, "--index", idx, "--workers", 0)
    assert res.exit_code == 2 and "free some space" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    monkeypatch.undo()
    assert len(Store.open(idx)) == 96 and "--rebuild" not in res.stderr


def test_hashes_and_frames_read_in_the_decode_workers_leave_the_vectors_as_a_direct_embed_gives(
        identity_dir, model_file, tmp_path, monkeypatch):
    from siamsearch.core.checkpoint import load_encoder
    from siamsearch.core.embed import embed_paths
    from siamsearch.core.images import file_sha256, frame_count

    frames = [Image.new("RGB", (32, 32), (40 * k, 90, 200 - 40 * k)) for k in range(3)]
    frames[0].save(identity_dir / "anim.gif", save_all=True, append_images=frames[1:])
    copy = identity_dir / "copy.png"
    copy.write_bytes(next(identity_dir.rglob("*.png")).read_bytes())  # one of the two is embedded, the other
    # takes its vector, and its facts are read at its commit
    read_here = []  # files whose frames the main process reads: one of the two byte-identical files
    monkeypatch.setattr(indexing, "frame_count", lambda p: read_here.append(p) or frame_count(p))
    store, report = index_folder(identity_dir, tmp_path / "idx", model_file, commit_every=10,
                                 runtime=Runtime(workers=2, batch_size=7))
    assert report.added == len(store) == len(find_images(identity_dir))
    assert [p.read_bytes() for p in read_here] == [copy.read_bytes()]
    rows = {row.abspath: row for row in store.iter_rows()}
    assert all(row.sha256 == file_sha256(p) and row.frames == frame_count(p) for p, row in rows.items())
    assert rows[identity_dir / "anim.gif"].frames == 3
    model, ckpt = load_encoder(model_file)
    direct = embed_paths(model, ckpt.preprocess, sorted(rows), workers=0)
    stored = store.vectors([rows[p].id for p in direct.paths])[1]
    assert np.abs(stored - direct.vectors).max() <= 1e-6


def test_a_run_killed_midway_with_decode_workers_and_run_again_holds_every_file_once(identity_dir, model_file,
                                                                                     tmp_path, monkeypatch):
    real_add, commits = store_mod.Store.add, []

    def killed_at_third(self, rows, vectors):
        commits.append(len(rows))
        if len(commits) == 3:
            raise KeyboardInterrupt
        return real_add(self, rows, vectors)

    monkeypatch.setattr(store_mod.Store, "add", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        index_folder(identity_dir, tmp_path / "idx", model_file, commit_every=10, runtime=Runtime(workers=2, batch_size=7))
    monkeypatch.setattr(store_mod.Store, "add", real_add)
    store, report = index_folder(identity_dir, tmp_path / "idx", model_file, runtime=Runtime(workers=2, batch_size=7))
    paths = [row.path for row in store.iter_rows()]
    assert len(paths) == len(set(paths)) == len(find_images(identity_dir)) and report.unchanged == sum(commits[:2])
