"""`siamsearch review`: a local page where a person looks at each group, decides, moves and undoes.

Safe by construction: the server listens on 127.0.0.1 only, on a port the system picks, and every request must
carry the random token of its URL (a GET in its query, a POST in an X-Token header with a JSON body, which a page
of another site cannot send); thumbnails are served by row id, only of files in the groups shown, never by a path
from the request; names reach the page as JSON and are set as text, never parsed as HTML. Decisions go to the
index (siamsearch.duplicates.decisions); moving is the very call `dedup --move-to --yes` makes
(commands.dedup_index), undo is duplicates.moves.undo_moves. Every change holds the index's write lock, so several
pages on one index take turns. The server stops after IDLE_SECONDS without a request, or with its terminal.
"""

from __future__ import annotations

import hmac
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from .commands import DedupRun, dedup_index, duplicate_groups
from .core.errors import SiamsearchError
from .duplicates import decisions
from .duplicates.dedup import KEEP_ORDER, DedupResult, Group
from .duplicates.moves import undo_moves
from .index.folder import locked
from .index.rows import Row
from .report import thumbnail

PAGE = Path(__file__).parent / "data" / "review.html"
IDLE_SECONDS = 3600  # the server stops after an hour without a request
PAGE_SIZE, MAX_PAGE = 50, 200  # groups per page: a page never holds thousands of images
THUMB, MAX_THUMB = 320, 1600  # thumbnail sides in pixels: the default, and the zoom's largest


@dataclass
class Review:
    """One index under review: its raw groups (the keep marks applied, cached until they change) and the rest of
    the decisions applied on each request, which is cheap."""

    index_dir: Path
    margin: float | None = None
    review_margin: float | None = None
    linkage: str = "kept"
    keep: str = "largest"
    manifest: str | None = None  # the last move made from the page, for its undo button
    _raw: DedupRun | None = field(default=None, repr=False)
    _prefer: frozenset[str] | None = field(default=None, repr=False)
    _rows: dict[int, Row] = field(default_factory=dict, repr=False)  # every row of the raw groups, by id
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def current(self) -> tuple[DedupResult, int, decisions.Applied, int]:
        """The groups as the decisions make them, how many places they changed, the decisions and their count."""
        listed = decisions.listed(self.index_dir)
        decided = decisions.Applied.of(listed)
        with self._lock:
            if self._raw is None or self._prefer != decided.keep:
                self._raw = duplicate_groups(self.index_dir, self.margin, self.review_margin, self.linkage, self.keep,
                                             prefer=decided.keep)
                self._prefer = decided.keep
                self._rows = {r.id: r for g in self._raw.result.groups for r in _files(g)}
                self.margin = self._raw.result.margin  # the margin chosen once stays the page's (and its move's)
                self.review_margin = self._raw.result.review_margin
            raw = self._raw.result
        result, applied = decided.result(raw)
        return result, applied, decided, len(listed)

    def rows(self) -> dict[int, Row]:
        """Every row of the raw groups by id: the only files whose thumbnails are served (made with the groups)."""
        if self._raw is None:
            self.current()
        return self._rows

    def page(self, offset: int, limit: int, show: str, folder: str, max_distance: float | None) -> dict[str, Any]:
        """One page of groups for the browser, with the counts and the margins."""
        result, applied, decided, count = self.current()
        marked = decided.named
        groups = [(n, g) for n, g in enumerate(result.groups, 1)
                  if (show != "undecided" or not _files_marked(g, marked))
                  and (not folder or any(r.path.startswith(folder) for r in _files(g)))
                  and (max_distance is None or g.max_distance <= max_distance)]
        members = [m for g in result.groups for m in g.members]
        return {"margin": result.margin, "review_margin": result.review_margin, "total": len(result.groups),
                "shown": len(groups), "offset": offset, "manifest": self.manifest, "applied": applied,
                "counts": {"duplicates": sum(m.status != "review" for m in members),
                           "review": sum(m.status == "review" for m in members),
                           "decisions": count,
                           "undecided": sum(not _files_marked(g, marked) for g in result.groups)},
                "groups": [_group_json(n, g) for n, g in groups[offset:offset + limit]]}

    def decide(self, kind: str, ids: list[int]) -> int:
        """Record a decision about files of the groups shown, under the index's write lock."""
        rows = self.rows()
        unknown = [i for i in ids if i not in rows]
        if unknown:
            raise decisions.DecisionError(f"no file {unknown[0]} in the groups under review")
        with locked(self.index_dir):
            return decisions.record(self.index_dir, kind, [rows[i] for i in ids])

    def forget(self, ids: list[int]) -> int:
        """Forget the decisions about these files of the groups shown."""
        rows = self.rows()
        with locked(self.index_dir):
            return decisions.forget(self.index_dir, [rows[i] for i in ids if i in rows])

    def bulk_keep(self, rule: str, prefer_format: str = "", prefer_folder: str = "") -> int:
        """Mark "keep this" in every undecided group: the file in prefer_folder, else of prefer_format (an extension),
        else the one rule (a --keep policy) keeps; how many groups it decided."""
        if rule not in KEEP_ORDER:
            raise decisions.DecisionError(f"unknown keep rule {rule!r}; choose one of {', '.join(KEEP_ORDER)}")
        result, _, decided, _ = self.current()
        marked = decided.named
        ext = prefer_format.lower().lstrip(".")
        chosen = [min(_files(g), key=lambda r: (not (prefer_folder and r.path.startswith(prefer_folder)),
                                                 not (ext and r.path.lower().endswith("." + ext)),
                                                 *KEEP_ORDER[rule](r)))
                  for g in result.groups if not _files_marked(g, marked)]
        chosen = [r for r in chosen if r.sha256 is not None]
        if chosen:
            with locked(self.index_dir):
                decisions.record(self.index_dir, "keep", chosen)
        return len(chosen)

    def move(self, dest: str) -> dict[str, Any]:
        """Move the duplicates as the page shows them: the same planned, checked, manifest-writing call as
        `siamsearch dedup --move-to DEST --yes`, at the page's margins."""
        self.current()
        with locked(self.index_dir):
            run = dedup_index(self.index_dir, margin=self.margin, review_margin=self.review_margin,
                              linkage=self.linkage, keep=self.keep, move_to=Path(dest).expanduser(), yes=True)
        moved = run.moved
        self.manifest = None if moved is None or moved.manifest is None else str(moved.manifest)
        return {"manifest": self.manifest, "moved": len(moved.done) if moved else 0,
                "skipped": [{"path": s.path, "reason": s.reason} for s in (moved.skipped if moved else [])]}

    def undo(self, manifest: str) -> dict[str, Any]:
        """Put back what a move from this page moved."""
        with locked(self.index_dir):
            done = undo_moves(manifest)
        if manifest == self.manifest:
            self.manifest = None
        return done.to_dict()


def _files(group: Group) -> list[Row]:
    """The kept file and the members of a group."""
    return [group.keep, *(m.row for m in group.members)]


def _files_marked(group: Group, marked: frozenset[str]) -> bool:
    """True when a decision names a file of the group."""
    return any(r.sha256 in marked for r in _files(group))


def _file_json(row: Row) -> dict[str, Any]:
    """What the page shows of a file beside its thumbnail; the path as data, never markup."""
    return {"id": row.id, "path": row.path, "size": row.size, "mtime": row.mtime_ns // 1_000_000_000,
            "width": row.width, "height": row.height, "exists": row.abspath.is_file()}


def _group_json(n: int, group: Group) -> dict[str, Any]:
    """One group for the page: its number, kept file, largest inner distance and members."""
    return {"n": n, "keep": _file_json(group.keep), "max_distance": round(group.max_distance, 4),
            "members": [_file_json(m.row) | {"distance": round(m.distance, 4), "status": m.status}
                        for m in group.members]}


class _Handler(BaseHTTPRequestHandler):
    """The page, its JSON API and the thumbnails; every request checked for the token first."""

    review: Review
    token: str
    touched: list[float]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the terminal shows the URL and errors only."""

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'self' "
                         "'unsafe-inline'; script-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _allowed(self, given: str | None) -> bool:
        """The token matches (compared in constant time); else the request is refused."""
        self.touched[0] = time.monotonic()
        if given is not None and hmac.compare_digest(given, self.token):
            return True
        self._json({"error": "a token is needed: open the URL siamsearch review printed"}, HTTPStatus.FORBIDDEN)
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not self._allowed(query.get("token")):
            return
        try:
            if url.path == "/":
                self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif url.path == "/api/groups":
                self._json(self.review.page(int(query.get("offset", 0)), min(MAX_PAGE, int(query.get("limit", PAGE_SIZE))),
                                            query.get("show", "all"), query.get("folder", ""),
                                            float(query["max"]) if query.get("max") else None))
            elif url.path.startswith("/thumb/"):
                self._thumbnail(url.path.removeprefix("/thumb/"), int(query.get("size", THUMB)))
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        except (ValueError, SiamsearchError) as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

    def _thumbnail(self, row_id: str, size: int) -> None:
        """The thumbnail of a file of the groups shown, by its row id alone."""
        row = self.review.rows().get(int(row_id)) if row_id.isdigit() else None
        if row is None:
            return self._json({"error": "no such file under review"}, HTTPStatus.NOT_FOUND)
        img = thumbnail(row.abspath, max(16, min(MAX_THUMB, size)))
        if isinstance(img, str):
            return self._json({"error": img}, HTTPStatus.NOT_FOUND)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        self._send(HTTPStatus.OK, buf.getvalue(), "image/jpeg")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if not self._allowed(self.headers.get("X-Token")):
            return
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return self._json({"error": "send JSON"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            self._json(self._act(urlparse(self.path).path, body))
        except (ValueError, KeyError, TypeError, SiamsearchError, OSError) as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

    def _act(self, action: str, body: dict[str, Any]) -> Any:
        """One change the page asks for."""
        review = self.review
        if action == "/api/decide":
            return {"recorded": review.decide(str(body["kind"]), [int(i) for i in body["ids"]])}
        if action == "/api/forget":
            return {"forgot": review.forget([int(i) for i in body["ids"]])}
        if action == "/api/bulk-keep":
            return {"decided": review.bulk_keep(str(body.get("rule", "largest")), str(body.get("format", "")),
                                                str(body.get("folder", "")))}
        if action == "/api/move":
            return review.move(str(body["dest"]))
        if action == "/api/undo":
            return review.undo(str(body["manifest"]))
        raise ValueError(f"no action {action}")


@dataclass
class Server:
    """A running review page: its URL (with the token), and how to stop it."""

    url: str
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(review: Review, port: int = 0, idle: float = IDLE_SECONDS) -> Server:
    """Start serving `review` on 127.0.0.1 in a background thread (port 0: a free one); it stops itself after
    `idle` seconds without a request. The groups are searched before this returns, so the page opens at once."""
    review.current()
    token, touched = secrets.token_urlsafe(24), [time.monotonic()]
    handler = type("Handler", (_Handler,), {"review": review, "token": token, "touched": touched})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server = Server(f"http://127.0.0.1:{httpd.server_address[1]}/?token={token}", httpd, thread)
    threading.Thread(target=_stop_when_idle, args=(server, touched, idle), daemon=True).start()
    return server


def _stop_when_idle(server: Server, touched: list[float], idle: float) -> None:
    """Stop the server once no request came for `idle` seconds."""
    while server.thread.is_alive():
        time.sleep(min(60.0, idle / 4))
        if time.monotonic() - touched[0] > idle:
            server.stop()
            return
