"""Files kept in place of moved duplicates, remembered in the index so moves across runs cannot drift.

Moving C (kept B), then in a later run B (kept A), leaves A alone for C however far A is from C: each move
was within the margin, the two together are not. When files move, the index's rows.sqlite remembers, by the
kept file's content hash, the vector of each file moved in its favour (a table of its own, made on first use;
an older index simply has none). A later plan moves a kept file of an earlier move only when its new kept file
lies within the margin of every file it stood for. `index --rebuild` makes a new rows.sqlite and so forgets
them, as it must: their vectors are the old index's, which a new model's distances cannot be compared with.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from .dedup import DedupResult
from ..index.folder import ROWS, side_table
from .moves import MovePlan, MoveReport
from ..index.store import Store

TABLE = "CREATE TABLE IF NOT EXISTS stand_ins (sha256 TEXT NOT NULL, moved TEXT NOT NULL, vector BLOB NOT NULL)"


def remember(store: Store, plan: MovePlan, report: MoveReport, result: DedupResult) -> int:
    """Record, for each file moved, the kept file's content hash and the moved file's vector; how many recorded.

    A kept file whose hash the index does not know (an older index) cannot be followed, nor can an index merged on
    disk by `cluster index` give vectors back: nothing is recorded for those."""
    rows = {m.path: m.row for g in result.groups for m in g.members} | {g.keep.path: g.keep for g in result.groups}
    kept = {move.path: rows[move.keep] for move in plan.moves}
    done = [path for path in report.done if kept[path].sha256 is not None]
    if not done or store.info().get("ondisk"):
        return 0
    vectors = store.vectors([rows[path].id for path in done])[1]
    with _table(store.path) as db:
        db.executemany("INSERT INTO stand_ins (sha256, moved, vector) VALUES (?, ?, ?)",
                       [(kept[p].sha256, p, v.astype(np.float32).tobytes()) for p, v in zip(done, vectors)])
    return len(done)


def held(store: Store, result: DedupResult) -> dict[str, str]:
    """Duplicates to leave in place, with the reason: each stood for a file moved earlier that lies beyond the
    margin of the file that would now be kept in its place."""
    members = [(m.row, g.keep) for g in result.groups for m in g.members if m.status == "duplicate"]  # an identical
    #         file's kept file has its bytes, so stands for the same files as well
    stood = _stood_for(store.path, {row.sha256 for row, _ in members if row.sha256 is not None})
    reasons = {}
    for row, keep in members:
        earlier = stood.get(row.sha256 or "", [])
        if not earlier:
            continue
        kept_vector = store.vectors([keep.id])[1][0]
        far = [(path, float(np.linalg.norm(v - kept_vector))) for path, v in earlier]
        path, distance = max(far, key=lambda f: f[1])
        if distance > result.margin:
            reasons[row.path] = (f"it was kept in place of {path}, moved earlier, which lies {distance:.4f} from "
                                 f"{keep.path} (beyond the margin {result.margin:.4f})")
    return reasons


def _stood_for(index_dir: Path, hashes: Iterable[str]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Content hash → (path, vector) of every file moved in favour of a file with that content."""
    wanted, found = sorted(hashes), defaultdict(list)
    if not wanted:
        return found
    with _table(index_dir) as db:
        for start in range(0, len(wanted), 500):  # under SQLite's variable limit
            part = wanted[start:start + 500]
            for sha, path, blob in db.execute(f"SELECT sha256, moved, vector FROM stand_ins WHERE sha256 IN "
                                              f"({', '.join('?' * len(part))})", part):
                found[sha].append((path, np.frombuffer(blob, np.float32)))
    return found


def _table(index_dir: Path) -> AbstractContextManager[sqlite3.Connection]:
    """rows.sqlite with the stand_ins table made (index.folder.side_table)."""
    return side_table(Path(index_dir) / ROWS, TABLE)
