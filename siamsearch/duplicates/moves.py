"""Moving duplicates out of a collection, and back: nothing is deleted, nothing is overwritten.

A move keeps each file's path relative to the index root under the destination folder. The manifest,
a JSON file in the destination ({root, dest, created, moves: [{from, to, size, sha256}]}, from relative to
root, to relative to dest), is written before the first file moves and rewritten with what did move,
so even an interrupted run can be undone. Undo moves a file back only when its hash still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.atomic import sync_folder, write_json
from .dedup import DedupResult, Group
from ..core.errors import NotFoundError, RefusedError, SiamsearchError
from ..core.images import frame_count, is_image_path
from ..index.folder import now, read_manifest
from ..index.rows import Row


class MoveError(RefusedError):
    """A move or undo that cannot start; the message is one line saying why."""


@dataclass(frozen=True)
class Skipped:
    """A file left where it is, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Move:
    """One planned move: path relative to the index root, moved to the same relative path under dest."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None  # the content it was indexed with, when the index knows it
    keep: str = ""  # the file kept in its place: checked again before the move, which needs it still there


@dataclass
class MovePlan:
    """What a move would do: the duplicates to move, the ones left alone with a reason."""

    root: Path
    dest: Path
    moves: list[Move] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    index: Path | None = None  # the index whose groups these are: its manifest vouches for root at undo
    wide: list[tuple[str, float]] = field(default_factory=list)  # (kept file, largest inner distance) of each
    #     group with moves whose files lie farther apart than the margin: only each to the kept file is within it


@dataclass
class MoveReport:
    """What a move or an undo did; manifest is None when nothing was to be moved."""

    manifest: Path | None
    done: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # undo: files an earlier undo already brought back

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary: manifest, files done, files skipped with the reason, files already back (undo)."""
        return {"manifest": None if self.manifest is None else str(self.manifest), "done": self.done,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped], "already": self.already}


def _changed(path: Path, size: int, mtime_ns: int) -> str | None:
    """Why a file cannot move (or be kept) as indexed: missing, a symlink, or changed since; else None."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link (only regular files are moved)"
    return None if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) else "changed since it was indexed"


def _content_changed(path: Path, indexed: str | None, digest: str | None = None) -> str | None:
    """Why a file's bytes are not the ones indexed (a `cp -p` replacement keeps size and mtime), or None.

    Indexes from before content hashes were stored know no digest: then only the stamp was checked.
    """
    if indexed is None:
        return None
    return None if (digest or sha256(path)) == indexed else "changed since it was indexed (same size and mtime)"


def _within(path: Path, folder: Path) -> bool:
    """True when path, symlinks resolved, is folder or inside it."""
    resolved, folder = path.resolve(), folder.resolve()
    return resolved == folder or folder in resolved.parents


def _check_dest(dest: Path, root: Path) -> None:
    """A destination inside the indexed folder is indexed again (dups/dups/...); one above it holds it.

    Raises:
        MoveError: dest is root, inside it, or an ancestor of it.
    """
    if dest == root:
        raise MoveError(f"{dest} is the indexed folder itself; choose another destination")
    if root in dest.parents:
        raise MoveError(f"{dest} is inside the indexed folder {root}: the next index would find the moved files "
                        "again; choose a destination outside it")
    if dest in root.parents:
        raise MoveError(f"{dest} holds the indexed folder {root}; choose a destination outside it")


def _group_moves(group: Group, dest: Path, root: Path, held: dict[str, str]) -> tuple[list[Move], list[Skipped]]:
    """A group's duplicates to move, or none when its kept file is not there as indexed: then no copy would be left."""
    duplicates = [m.row for m in group.members if m.status in ("duplicate", "identical")]
    near = {m.row.path for m in group.members if m.status == "duplicate"}  # not known to hold the kept file's bytes
    keep = group.keep
    kept_reason = _changed(keep.abspath, keep.size, keep.mtime_ns) or _content_changed(keep.abspath, keep.sha256)
    if kept_reason:
        why = f"the kept file {keep.path} is {kept_reason}; group left alone"
        return [], [Skipped(row.path, why) for row in duplicates]
    if not _within(keep.abspath, root):
        why = f"the kept file {keep.path} lies outside {root} (a symlinked folder); group left alone"
        return [], [Skipped(row.path, why) for row in duplicates]
    kept = _identity(keep.abspath)
    moves, skipped = [], []
    for row in duplicates:
        reason = _changed(row.abspath, row.size, row.mtime_ns)
        if reason is None and _identity(row.abspath) == kept:
            reason = (f"the kept file {keep.path} under another name (one folder shown twice: a bind mount, a share "
                      "mounted twice); moving it would leave no copy")
        if reason is None and not _within(row.abspath, root):
            reason = f"it lies outside {root} (a symlinked folder): undo could not put it back"
        reason = reason or held.get(row.path)
        if reason is None and row.path in near and _multiframe(row, keep):
            reason = "a multi-frame file (or its kept file is): only a byte-identical copy of one is moved"
        if reason is None and not _within((dest / row.path).parent, dest):
            reason = f"{dest / row.path} would lie outside {dest} (a symlinked folder)"
        if reason is None and os.path.lexists(dest / row.path):
            reason = f"{dest / row.path} already exists"
        if reason:
            skipped.append(Skipped(row.path, reason))
        else:
            moves.append(Move(row.path, row.size, row.mtime_ns, row.sha256, keep.path))
    return moves, skipped


def _multiframe(row: Row, keep: Row) -> bool:
    """True when either file holds several frames; a row that does not know (an older index) asks the file."""
    frames = lambda r: r.frames if r.frames is not None else frame_count(r.abspath)  # noqa: E731
    return (frames(row) or 1) > 1 or (frames(keep) or 1) > 1


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file: two names of one file share it."""
    st = path.stat()
    return st.st_dev, st.st_ino


def plan_moves(result: DedupResult, dest: Path | str, index: Path | str | None = None,
               held: dict[str, str] | None = None) -> MovePlan:
    """The duplicates (not the files to review) that would move to dest; touches nothing.

    A group moves only when its kept file is still there, a regular file unchanged since indexing;
    symlinks are never moved, nor the files `held` names (path → why; siamsearch.duplicates.standins). A group whose
    files lie farther apart than the margin is listed in the plan's `wide` (each moved file is within it of the
    kept file).

    Raises:
        MoveError: dest is the index root, inside it, or an ancestor of it.
    """
    dest, root = Path(dest).expanduser().resolve(), result.root.resolve()
    _check_dest(dest, root)
    plan = MovePlan(result.root, dest, index=Path(index).resolve() if index is not None else None)
    for group in result.groups:
        moves, skipped = _group_moves(group, dest, root, held or {})
        if moves and group.max_distance > result.margin:
            plan.wide.append((group.keep.path, group.max_distance))
        plan.moves.extend(moves)
        plan.skipped.extend(skipped)
    return plan


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _move_file(src: Path, dst: Path) -> None:
    """Move one file without ever replacing another: a hard link then unlink, or an exclusive copy.

    The new name (and a copy's bytes and times) reach the disk before the old name is removed: a crash in
    between leaves two names of the file, never none.

    Raises:
        FileExistsError: something is already at dst.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)  # atomic, fails when dst exists, keeps mtime
    except FileExistsError:
        raise
    except OSError:  # another filesystem, or one without hard links
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout)
            shutil.copystat(src, dst)
            fout.flush()
            os.fsync(fout.fileno())
    sync_folder(dst.parent)
    try:
        os.unlink(src)
    except OSError:
        os.unlink(dst)  # the file stays where it was: no copy in dest that the manifest does not know
        raise
    sync_folder(src.parent)


def _try_move(src: Path, dst: Path) -> str | None:
    """Move one file; the reason when it could not be moved."""
    try:
        _move_file(src, dst)
    except FileExistsError:
        return f"{dst} already exists; not overwritten"
    except OSError as exc:
        return f"cannot move: {exc.strerror or exc}"
    return None


def _new_manifest_path(dest: Path) -> Path:
    """A manifest name in dest that no file has yet, reserved by creating it exclusively: two runs within a
    second never share one."""
    stamp, n = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"), 0
    while True:
        path = dest / (f"siamsearch-moves-{stamp}.json" if n == 0 else f"siamsearch-moves-{stamp}-{n}.json")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


def apply_moves(plan: MovePlan) -> MoveReport:
    """Move the planned files, after writing the manifest that undo_moves reverses.

    Files are hashed first; one that changed size since planning, or whose target appeared, is skipped.
    """
    report = MoveReport(None, skipped=list(plan.skipped))
    entries = []
    for move in plan.moves:
        src = plan.root / move.path
        reason = _changed(src, move.size, move.mtime_ns)
        digest = None if reason else sha256(src)
        reason = reason or _content_changed(src, move.sha256, digest)
        if reason:
            report.skipped.append(Skipped(move.path, reason))
            continue
        entries.append({"from": move.path, "to": move.path, "size": move.size, "sha256": digest})
    if not entries:
        return report
    plan.dest.mkdir(parents=True, exist_ok=True)
    report.manifest = _new_manifest_path(plan.dest)
    data = {"root": str(plan.root), "dest": str(plan.dest), "created": now(), "moves": entries} | ({"index": str(plan.index)} if plan.index else {})
    write_json(report.manifest, data)  # first: an interrupted run can still be undone
    moved, keeps = [], {move.path: move.keep for move in plan.moves}
    for entry in entries:
        kept = keeps[entry["from"]]
        if kept and not (plan.root / kept).is_file():  # gone since planning, or with a move: this one stays
            report.skipped.append(Skipped(entry["from"], f"the kept file {kept} is gone; not moved"))
            continue
        reason = _try_move(plan.root / entry["from"], plan.dest / entry["to"])
        if reason == ALREADY_BACK:
            report.already.append(entry["from"])
        elif reason:
            report.skipped.append(Skipped(entry["from"], reason))
        else:
            moved.append(entry)
            report.done.append(entry["from"])
    write_json(report.manifest, {**data, "moves": moved})
    return report


def _relative(value: Any) -> bool:
    """A manifest path that stays inside its folder and names an image: a relative string with no '..' and no
    hidden part (a planted manifest must not write ~/.config/autostart/x.desktop)."""
    if not isinstance(value, str) or not value:
        return False
    parts = Path(value).parts
    return (not Path(value).is_absolute() and ".." not in parts and not value.startswith(("/", "\\"))
            and not any(part.startswith(".") for part in parts) and is_image_path(Path(value)))


def _read_manifest(path: Path, root: Path | None = None) -> dict[str, Any]:
    """A move manifest, checked field by field: a hostile or edited file is refused before anything moves.

    Raises:
        NotFoundError: no such manifest. MoveError: not JSON, wrong shape, a path that is absolute or climbs out with '..', or
        a manifest that does not sit in the folder it says the files were moved to.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NotFoundError(f"no such manifest: {path}") from None
    except (ValueError, OSError):
        raise MoveError(f"{path} is not a siamsearch move manifest") from None
    usable = (isinstance(data, dict) and isinstance(data.get("root"), str) and isinstance(data.get("dest"), str)
              and isinstance(data.get("moves"), list)
              and all(isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in data["moves"]))
    if not usable:
        raise MoveError(f"{path} is not a siamsearch move manifest")
    bad = [e for e in data["moves"] if not (_relative(e.get("from")) and _relative(e.get("to")))]
    if bad:
        raise MoveError(f"{path} names a path that is absolute, leaves its folder, is hidden or is no image "
                        f"({bad[0].get('from')!r} → {bad[0].get('to')!r}); refused")
    if Path(path).resolve().parent != Path(data["dest"]).resolve():
        raise MoveError(f"{path} does not sit in the folder it says files were moved to ({data['dest']}); refused")
    _check_root(path, data, root)
    return data


def _check_root(path: Path, data: dict[str, Any], stated: Path | None) -> None:
    """The folder files go back to must exist and be the one the manifest's index indexes; a manifest that names
    no index (from before one was recorded, or written by hand) needs the person to state that folder.

    Raises:
        MoveError: root is not a folder, the named index is missing, unreadable or indexes another folder, or no
        index is named and the stated root is not the manifest's.
    """
    root = Path(data["root"])
    if not root.is_dir():
        raise MoveError(f"{path} puts files back into {root}, which is not a folder; refused")
    if "index" not in data:
        if stated is None or Path(stated).expanduser().resolve() != root.resolve():
            raise MoveError(f"{path} names no index that vouches for {root}; if the files came from there, run "
                            f"again with --root {root}")
        return
    try:
        indexed = Path(read_manifest(Path(str(data["index"])))["root"]).resolve()
    except SiamsearchError as exc:
        raise MoveError(f"{path} names the index {data['index']}, which cannot vouch for {root} ({exc}); "
                        "refused") from None
    if indexed != root.resolve():
        raise MoveError(f"{path} puts files back into {root}, but its index {data['index']} indexes {indexed}; "
                        "refused")


ALREADY_BACK = "already back"  # _restore's answer for a file an earlier undo restored


def _restore(src: Path, back: Path, dest: Path, root: Path, digest: str) -> str | None:
    """Move a file back when nothing is in its old place and its bytes are the ones moved; else the reason."""
    if not _within(src.parent, dest) or not _within(back.parent, root):
        return "its path leads outside the folders of the manifest (a symlinked folder); refused"
    if os.path.lexists(back):
        if not os.path.lexists(src) and not back.is_symlink() and back.is_file() and sha256(back) == digest:
            return ALREADY_BACK  # an earlier undo brought it back: nothing to do, nothing skipped
        return f"{back} already exists; not overwritten"
    if src.is_symlink() or not src.is_file():
        return f"{src} is gone" if not os.path.lexists(src) else f"{src} is not a regular file"
    if sha256(src) != digest:
        return f"{src} changed since it was moved"
    return _try_move(src, back)


def undo_folders(manifest: Path | str, root: Path | None = None) -> tuple[Path, Path]:
    """(root, destination) of a manifest, after every check undo makes: what a person sees before files move."""
    data = _read_manifest(Path(manifest), root)
    return Path(data["root"]), Path(data["dest"])


def undo_moves(manifest: Path | str, root: Path | None = None) -> MoveReport:
    """Move the files a manifest lists back where they were, when their hash still matches.

    A file already back at its old place is never overwritten; one that an earlier undo brought back (gone from
    the destination, its old place holding the bytes moved) is listed as already back; each other file not
    restored is skipped with a reason.
    Every path must stay inside the manifest's root (going back) and its destination folder (coming from).
    root: the folder the files go back into, as the person states it: needed when the manifest names no index.

    Raises:
        MoveError: the manifest is missing, unreadable, or unsafe (see _read_manifest).
    """
    manifest = Path(manifest)
    data = _read_manifest(manifest, root)
    root, dest = Path(data["root"]), Path(data["dest"])
    report = MoveReport(manifest)
    for entry in data["moves"]:
        reason = _restore(dest / entry["to"], root / entry["from"], dest, root, entry["sha256"])
        if reason == ALREADY_BACK:
            report.already.append(entry["from"])
        elif reason:
            report.skipped.append(Skipped(entry["from"], reason))
        else:
            report.done.append(entry["from"])
    return report
