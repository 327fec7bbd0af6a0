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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import write_json
from .dedup import DedupResult
from .errors import UsageError


class MoveError(UsageError):
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


@dataclass
class MovePlan:
    """What a move would do: the duplicates to move, the ones left alone with a reason."""

    root: Path
    dest: Path
    moves: list[Move] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class MoveReport:
    """What a move or an undo did; manifest is None when nothing was to be moved."""

    manifest: Path | None
    done: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _changed(path: Path, size: int, mtime_ns: int) -> str | None:
    """Why a file cannot move as indexed (missing or changed since), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    return None if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) else "changed since it was indexed"


def plan_moves(result: DedupResult, dest: Path | str) -> MovePlan:
    """The duplicates (not the files to review) that would move to dest; touches nothing.

    Raises:
        MoveError: dest is the index root itself.
    """
    dest = Path(dest).expanduser().resolve()
    if dest == result.root.resolve():
        raise MoveError(f"{dest} is the indexed folder itself; choose another destination")
    plan = MovePlan(result.root, dest)
    for member in (m for g in result.groups for m in g.members if m.status == "duplicate"):
        row = member.row
        reason = _changed(row.abspath, row.size, row.mtime_ns)
        if reason is None and os.path.lexists(dest / row.path):
            reason = f"{dest / row.path} already exists"
        if reason:
            plan.skipped.append(Skipped(row.path, reason))
        else:
            plan.moves.append(Move(row.path, row.size))
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

    Raises:
        FileExistsError: something is already at dst.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # atomic, fails when dst exists, keeps mtime
    except FileExistsError:
        raise
    except OSError:  # another filesystem, or one without hard links
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, dst)
    os.unlink(src)


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
    """A manifest name in dest that no file has yet."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path, n = dest / f"siamsearch-moves-{stamp}.json", 1
    while path.exists():
        path, n = dest / f"siamsearch-moves-{stamp}-{n}.json", n + 1
    return path


def apply_moves(plan: MovePlan) -> MoveReport:
    """Move the planned files, after writing the manifest that undo_moves reverses.

    Files are hashed first; one that changed size since planning, or whose target appeared, is skipped.
    """
    report = MoveReport(None, skipped=list(plan.skipped))
    entries = []
    for move in plan.moves:
        src = plan.root / move.path
        try:
            digest, size = sha256(src), src.stat().st_size
        except FileNotFoundError:
            report.skipped.append(Skipped(move.path, "missing"))
            continue
        if size != move.size:
            report.skipped.append(Skipped(move.path, "changed since it was indexed"))
            continue
        entries.append({"from": move.path, "to": move.path, "size": size, "sha256": digest})
    if not entries:
        return report
    plan.dest.mkdir(parents=True, exist_ok=True)
    report.manifest = _new_manifest_path(plan.dest)
    data = {"root": str(plan.root), "dest": str(plan.dest), "created": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "moves": entries}
    write_json(report.manifest, data)  # first: an interrupted run can still be undone
    moved = []
    for entry in entries:
        reason = _try_move(plan.root / entry["from"], plan.dest / entry["to"])
        if reason:
            report.skipped.append(Skipped(entry["from"], reason))
        else:
            moved.append(entry)
            report.done.append(entry["from"])
    write_json(report.manifest, {**data, "moves": moved})
    return report


def _read_manifest(path: Path) -> dict[str, Any]:
    """A move manifest, checked for the fields undo needs."""
    try:
        data = json.loads(Path(path).read_text())
        usable = {"root", "dest", "moves"} <= data.keys() and all(
            {"from", "to", "sha256"} <= entry.keys() for entry in data["moves"])
    except FileNotFoundError:
        raise MoveError(f"no such manifest: {path}") from None
    except (ValueError, TypeError, AttributeError):
        usable = False
    if not usable:
        raise MoveError(f"{path} is not a siamsearch move manifest")
    return data


def _restore(src: Path, back: Path, digest: str) -> str | None:
    """Move a file back when nothing is in its old place and its bytes are the ones moved; else the reason."""
    if os.path.lexists(back):
        return f"{back} already exists; not overwritten"
    if not src.is_file():
        return f"{src} is gone"
    if sha256(src) != digest:
        return f"{src} changed since it was moved"
    return _try_move(src, back)


def undo_moves(manifest: Path | str) -> MoveReport:
    """Move the files a manifest lists back where they were, when their hash still matches.

    A file already back at its old place is never overwritten; each file not restored is skipped with a reason.

    Raises:
        MoveError: the manifest is missing or unreadable.
    """
    manifest = Path(manifest)
    data = _read_manifest(manifest)
    root, dest = Path(data["root"]), Path(data["dest"])
    report = MoveReport(manifest)
    for entry in data["moves"]:
        reason = _restore(dest / entry["to"], root / entry["from"], entry["sha256"])
        if reason:
            report.skipped.append(Skipped(entry["from"], reason))
        else:
            report.done.append(entry["from"])
    return report
