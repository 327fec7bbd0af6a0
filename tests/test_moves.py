"""Moving duplicates aside and back can never lose a file: each refusal here once lost or planted files."""

import json
import os
from pathlib import Path

import pytest

from siamsearch.duplicates.dedup import DedupResult, Group, Member
from siamsearch.duplicates.moves import MoveError, apply_moves, plan_moves, undo_moves
from siamsearch.index.rows import Row


def row(root: Path, rel: str, content: bytes = b"x", link_to: Path | None = None) -> Row:
    """A real file (or symlink) under root and the row an index would hold for it."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if link_to is None:
        path.write_bytes(content)
    else:
        path.symlink_to(link_to)
    st = path.lstat()
    return Row(0, rel, path, None, st.st_size, st.st_mtime_ns, 8, 8)


def result(root: Path, *groups: tuple[Row, list[Row]]) -> DedupResult:
    """A dedup result whose groups keep the first row and hold the others as duplicates."""
    return DedupResult(root, 0.1, 0.1, False, [Group(keep, 0.05, [Member(r, 0.05, "duplicate") for r in others])
                                               for keep, others in groups], 0)


def test_a_group_whose_kept_file_is_gone_or_changed_moves_nothing(tmp_path):
    root = tmp_path / "photos"
    gone, copy1 = row(root, "a.jpg"), row(root, "a_copy.jpg")
    edited, copy2 = row(root, "b.jpg"), row(root, "b_copy.jpg")
    fine, copy3 = row(root, "c.jpg"), row(root, "c_copy.jpg")
    gone.abspath.unlink()
    edited.abspath.write_bytes(b"longer now")
    plan = plan_moves(result(root, (gone, [copy1]), (edited, [copy2]), (fine, [copy3])), tmp_path / "dups")
    assert [m.path for m in plan.moves] == ["c_copy.jpg"]
    reasons = {s.path: s.reason for s in plan.skipped}
    assert "a.jpg is missing" in reasons["a_copy.jpg"] and "b.jpg is changed" in reasons["b_copy.jpg"]


@pytest.mark.parametrize("where", ["inside", "nested", "ancestor", "same"])
def test_a_destination_inside_or_above_the_root_is_refused(tmp_path, where):
    root = tmp_path / "lib" / "photos"
    keep, copy = row(root, "a.jpg"), row(root, "a_copy.jpg")
    dest = {"inside": root / "dups", "nested": root / "x" / "dups", "ancestor": tmp_path / "lib", "same": root}[where]
    with pytest.raises(MoveError):
        plan_moves(result(root, (keep, [copy])), dest)


def test_symlinks_are_never_moved_or_kept(tmp_path):
    root, outside = tmp_path / "photos", tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"target")
    keep, link = row(root, "a.jpg"), row(root, "a_link.jpg", link_to=outside)
    link_keep, copy = row(root, "b_link.jpg", link_to=outside), row(root, "b.jpg")
    plan = plan_moves(result(root, (keep, [link]), (link_keep, [copy])), tmp_path / "dups")
    assert plan.moves == [] and {s.path for s in plan.skipped} == {"a_link.jpg", "b.jpg"}
    assert outside.read_bytes() == b"target" and link.abspath.is_symlink()


def moved(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A real move of one duplicate: (root, dest, manifest)."""
    root, dest = tmp_path / "photos", tmp_path / "dups"
    keep, copy = row(root, "a.jpg", b"same"), row(root, "sub/a_copy.jpg", b"same")
    report = apply_moves(plan_moves(result(root, (keep, [copy])), dest))
    assert report.done == ["sub/a_copy.jpg"] and (dest / "sub/a_copy.jpg").is_file()
    return root, dest, report.manifest


@pytest.mark.parametrize("field, value", [("from", "/etc/evil.desktop"), ("from", "../../outside.jpg"),
                                          ("to", "../../../home/x/.config/autostart/x.desktop"), ("from", 123)])
def test_undo_refuses_a_manifest_whose_paths_leave_its_folders(tmp_path, field, value):
    root, dest, manifest = moved(tmp_path)
    data = json.loads(manifest.read_text())
    data["moves"][0][field] = value
    manifest.write_text(json.dumps(data))
    with pytest.raises(MoveError):
        undo_moves(manifest)
    assert (dest / "sub/a_copy.jpg").is_file() and not (root / "sub/a_copy.jpg").exists()


@pytest.mark.parametrize("broken", [{"root": None}, {"moves": "all"}, {"dest": 5}])
def test_undo_refuses_a_manifest_of_the_wrong_shape(tmp_path, broken):
    _, _, manifest = moved(tmp_path)
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | broken))
    with pytest.raises(MoveError):
        undo_moves(manifest)


def test_undo_refuses_a_manifest_that_does_not_sit_in_its_destination(tmp_path):
    _, _, manifest = moved(tmp_path)
    elsewhere = tmp_path / "downloads" / manifest.name
    elsewhere.parent.mkdir()
    elsewhere.write_text(manifest.read_text())
    with pytest.raises(MoveError, match="does not sit"):
        undo_moves(elsewhere)


def test_undo_does_not_put_back_a_symlink_planted_in_the_destination(tmp_path):
    root, dest, manifest = moved(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"same")
    (dest / "sub/a_copy.jpg").unlink()
    os.symlink(secret, dest / "sub/a_copy.jpg")
    report = undo_moves(manifest, root)
    assert report.done == [] and "not a regular file" in report.skipped[0].reason
    assert not (root / "sub/a_copy.jpg").exists()


def test_undo_puts_the_file_back_into_the_folder_the_person_states_when_no_index_vouches_for_it(tmp_path):
    root, dest, manifest = moved(tmp_path)  # planned with no index: its manifest names none
    for stated in (None, tmp_path):
        with pytest.raises(MoveError, match="names no index"):
            undo_moves(manifest, stated)
    assert undo_moves(manifest, root).done == ["sub/a_copy.jpg"]
    assert (root / "sub/a_copy.jpg").read_bytes() == b"same" and not (dest / "sub/a_copy.jpg").exists()


def test_content_replaced_under_the_same_stamp_is_caught_for_kept_files_and_duplicates(tmp_path):
    import hashlib

    root = tmp_path / "photos"

    def indexed(rel: str, content: bytes) -> Row:
        r = row(root, rel, content)
        return Row(*[getattr(r, f) for f in ("id", "path", "abspath", "identity", "size", "mtime_ns", "width",
                                              "height")], hashlib.sha256(content).hexdigest())

    def replace_keeping_stamp(r: Row, content: bytes) -> None:
        r.abspath.write_bytes(content)
        os.utime(r.abspath, ns=(r.mtime_ns, r.mtime_ns))  # as `cp -p` or `rsync -a` would leave it

    keep1, copy1 = indexed("a.jpg", b"aaaa"), indexed("a_copy.jpg", b"aaaa")
    keep2, copy2 = indexed("b.jpg", b"bbbb"), indexed("b_copy.jpg", b"bbbb")
    replace_keeping_stamp(keep1, b"AAAA")
    plan = plan_moves(result(root, (keep1, [copy1]), (keep2, [copy2])), tmp_path / "dups")
    assert [m.path for m in plan.moves] == ["b_copy.jpg"] and "same size and mtime" in plan.skipped[0].reason
    replace_keeping_stamp(copy2, b"BBBB")
    report = apply_moves(plan)
    assert report.done == [] and (root / "b_copy.jpg").read_bytes() == b"BBBB"


def test_a_move_across_file_systems_is_on_disk_before_the_original_is_unlinked(tmp_path, monkeypatch):
    import errno

    import siamsearch.duplicates.moves as moves

    src, dst = tmp_path / "a" / "x.png", tmp_path / "b" / "sub" / "x.png"
    src.parent.mkdir()
    src.write_bytes(b"picture")
    events = []

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    real_unlink = os.unlink
    monkeypatch.setattr(moves.os, "link", cross_device)
    monkeypatch.setattr(moves, "sync_folder", lambda folder: events.append(("sync", Path(folder))))
    monkeypatch.setattr(moves.os, "unlink", lambda path: (events.append(("unlink", Path(path))), real_unlink(path)))
    moves._move_file(src, dst)
    assert dst.read_bytes() == b"picture" and not src.exists()
    assert events == [("sync", dst.parent), ("unlink", src), ("sync", src.parent)]


def test_a_kept_file_shown_twice_or_a_file_outside_the_root_is_never_moved(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    keep = row(root, "a/x.png", b"photo")
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # one folder shown twice, as a bind mount does
    twice = Row(1, "b/x.png", root / "b" / "x.png", None, keep.size, keep.mtime_ns, 8, 8)
    linked = row(root, "c/x.png", b"")
    linked.abspath.unlink()
    os.link(keep.abspath, linked.abspath)  # a second name of the same file
    linked = Row(2, "c/x.png", linked.abspath, None, keep.size, keep.mtime_ns, 8, 8)
    outside = row(elsewhere, "y.png", b"other")
    (root / "out").symlink_to(elsewhere, target_is_directory=True)
    away = Row(3, "out/y.png", root / "out" / "y.png", None, outside.size, outside.mtime_ns, 8, 8)
    plan = plan_moves(result(root, (keep, [twice, linked, away])), tmp_path / "dups")
    assert plan.moves == []
    reasons = {s.path: s.reason for s in plan.skipped}
    assert "another name" in reasons["b/x.png"] and "another name" in reasons["c/x.png"]
    assert "outside" in reasons["out/y.png"]
    kept_outside = plan_moves(result(root, (away, [row(root, "d/z.png", b"other")])), tmp_path / "dups")
    assert kept_outside.moves == [] and "outside" in kept_outside.skipped[0].reason
    assert keep.abspath.read_bytes() == b"photo" and outside.abspath.read_bytes() == b"other"


def test_duplicates_stay_when_their_kept_file_goes_before_they_move(tmp_path):
    root = tmp_path / "root"
    keep, a, b = row(root, "k.png", b"k"), row(root, "a.png", b"a"), row(root, "b.png", b"b")
    plan = plan_moves(result(root, (keep, [a, b])), tmp_path / "dups")
    assert len(plan.moves) == 2
    keep.abspath.unlink()
    done = apply_moves(plan)
    assert done.done == [] and a.abspath.exists() and b.abspath.exists()
    assert all("is gone" in s.reason for s in done.skipped)


def test_undo_refuses_a_planted_manifest_that_writes_outside_images_or_into_another_folder(tmp_path):
    home, downloads = tmp_path / "home", tmp_path / "downloads"
    home.mkdir()
    downloads.mkdir()
    (downloads / "evil.desktop").write_text("[Desktop Entry]")
    planted = {"root": str(home), "dest": str(downloads), "moves": [
        {"from": ".config/autostart/evil.desktop", "to": "evil.desktop", "sha256": "0" * 64}]}
    (downloads / "siamsearch-moves-1.json").write_text(json.dumps(planted))
    with pytest.raises(MoveError, match="leaves its folder"):
        undo_moves(downloads / "siamsearch-moves-1.json")
    assert not (home / ".config").exists()
    for root, why in ((tmp_path / "nowhere", "not a folder"), (home, "cannot vouch")):
        planted |= {"root": str(root), "index": str(tmp_path / "no-index"),
                    "moves": [{"from": "x.png", "to": "x.png", "sha256": "0" * 64}]}
        (downloads / "siamsearch-moves-1.json").write_text(json.dumps(planted))
        with pytest.raises(MoveError, match=why):
            undo_moves(downloads / "siamsearch-moves-1.json")


def test_a_manifest_names_its_index_and_undo_checks_it_indexes_the_root(tmp_path, new_store):
    root, dest = tmp_path / "root", tmp_path / "dups"
    keep, copy = row(root, "a.png", b"same"), row(root, "a_copy.png", b"same")
    new_store(root).close()  # an index of root at tmp_path/index
    plan = plan_moves(result(root, (keep, [copy])), dest, index=tmp_path / "index")
    manifest = apply_moves(plan).manifest
    assert json.loads(manifest.read_text())["index"] == str((tmp_path / "index").resolve())
    other = tmp_path / "other"
    other.mkdir()
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"root": str(other)}))
    with pytest.raises(MoveError, match="indexes"):
        undo_moves(manifest)
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"root": str(root)}))
    assert undo_moves(manifest).done == ["a_copy.png"]


def test_manifest_names_are_reserved_so_two_runs_never_share_one(tmp_path):
    from siamsearch.duplicates.moves import _new_manifest_path

    first, second = _new_manifest_path(tmp_path), _new_manifest_path(tmp_path)
    assert first != second and first.exists() and second.exists()


def test_a_failed_unlink_leaves_no_copy_the_manifest_does_not_know(tmp_path, monkeypatch):
    import errno

    import siamsearch.duplicates.moves as moves

    src, dst = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    src.parent.mkdir()
    src.write_bytes(b"picture")
    real_unlink = os.unlink

    def refuse_source(path):
        if Path(path) == src:
            raise OSError(errno.EACCES, "Permission denied")
        real_unlink(path)

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(moves.os, "link", cross_device)
    monkeypatch.setattr(moves.os, "unlink", refuse_source)
    assert "Permission denied" in moves._try_move(src, dst)
    assert src.read_bytes() == b"picture" and not dst.exists()
