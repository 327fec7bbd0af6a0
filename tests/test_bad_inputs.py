"""Bad inputs: one folder holding every awkward kind of file next to good images, run through the CLI.

What a careful user expects of each kind (index, query, train and eval agree; dedup never reads files):

| kind                                         | outcome                                                       |
|----------------------------------------------|---------------------------------------------------------------|
| empty file                                   | skipped: "empty file"                                         |
| truncated JPEG                               | skipped: "truncated file"                                     |
| text named .jpg                              | skipped: "not an image"                                       |
| PNG named .jpg                               | indexed: the content decides, not the extension               |
| CMYK JPEG                                    | indexed (converted to RGB)                                    |
| 16-bit PNG                                   | indexed (scaled to 8 bits)                                    |
| 1-bit PNG                                    | indexed                                                       |
| palette PNG with transparency                | indexed (composited on white)                                 |
| RGBA PNG                                     | indexed (composited on white)                                 |
| 1x1 image                                    | indexed (a valid image, however small)                        |
| 20,000 x 20,000 PNG (400 MP > MAX_PIXELS)    | skipped: "too large (20000x20000 pixels ...)"                 |
| animated GIF                                 | indexed: its first frame                                      |
| multi-page TIFF                              | indexed: its first page                                       |
| WebP                                         | indexed                                                       |
| EXIF-rotated JPEG (orientation 6)            | indexed upright: embeds as the same picture stored upright    |
| unreadable file (chmod 000; not as root)     | skipped: "permission denied"                                  |
| FIFO named .jpg                              | skipped: "not a regular file" (never opened: it would block)  |
| dangling symlink                             | skipped: "broken symbolic link"                               |
| symlink loop (file), link to a folder above  | skipped: "symbolic link loop ..."                             |
| names with spaces, unicode, a newline,       | indexed; printed escaped, never obeyed                        |
|   `<script>`, `[red]`, `[/]`                 |                                                               |
| name with a non-UTF-8 byte                   | index: skipped, "file name is not valid UTF-8; rename it"     |
|                                              | (the index stores names as text); train and eval use it       |
| hidden files (.DS_Store, ._x.jpg)            | ignored: not read, not counted, not listed                    |
| a folder of only bad files                   | each file skipped with its reason; the run goes on            |

Any skipped file makes the exit code 1; each is listed once with a one-line reason.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import make_identities, run_cli
from PIL import Image

ROOT_USER = os.geteuid() == 0
NON_UTF8 = b"caf\xe9.png"


def picture(seed: int, size: int = 32) -> np.ndarray:
    """A distinct RGB picture: coarse random blocks, so every good file has its own nearest neighbour."""
    rng = np.random.default_rng(1000 + seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((size // 4, size // 4, 1), np.uint8))


def upright(size: int = 48) -> np.ndarray:
    """A picture that looks different when turned: bright top, dark bottom, a red block at the top left."""
    img = np.zeros((size, size, 3), np.uint8)
    img[: size // 2] = 220
    img[: size // 4, : size // 4] = (255, 0, 0)
    img[size // 2:, size // 2:] = (0, 0, 255)
    return img


def png_header_only_giant(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side white pixels (400 MP), a few tens of KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def write_good_kinds(folder: Path) -> list[Path]:
    """Every kind that must index, each a distinct picture; returns their paths."""
    made = []

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(folder / name, **kw)
        made.append(folder / name)

    save("png named.jpg", Image.fromarray(picture(1)), format="PNG")
    save("cmyk.jpg", Image.fromarray(picture(2)).convert("CMYK"), quality=95)
    deep = (picture(3)[..., 0].astype(np.uint16) * 257)
    save("deep16.png", Image.fromarray(deep))
    save("bilevel.png", Image.fromarray(picture(4)[..., 0] > 127))
    pal = Image.fromarray(picture(5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    save("palette.png", pal, transparency=0)
    rgba = np.dstack([picture(6), np.where(picture(7)[..., :1] > 127, 255, 60).astype(np.uint8)])
    save("rgba.png", Image.fromarray(rgba))
    save("one pixel.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    frames = [Image.fromarray(picture(8 + i)) for i in range(3)]
    save("anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    pages = [Image.fromarray(picture(11 + i)) for i in range(3)]
    save("pages.tif", pages[0], save_all=True, append_images=pages[1:])
    save("photo.webp", Image.fromarray(picture(14)), lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: the viewer turns it right
    save("rotated.jpg", Image.fromarray(upright()).transpose(Image.Transpose.ROTATE_90), quality=100, subsampling=0,
         exif=exif)
    for i, name in enumerate(["with space.png", "ünïcødé 名前.png", "new\nline.png", "<script>.png",
                              "[red]x.png"]):
        save(name, Image.fromarray(picture(20 + i)))
    (folder / "[").mkdir()
    save("[/].png", Image.fromarray(picture(30)))  # a path that reads "[/]": rich's closing tag
    return made


def write_bad_kinds(folder: Path) -> dict[str, str]:
    """Every kind that must be skipped: {name relative to folder: the words its reason must hold}."""
    (folder / "empty.jpg").write_bytes(b"")
    jpeg = folder / "truncated.jpg"
    Image.fromarray(picture(40, 64)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:600])
    (folder / "text.jpg").write_text("this is not an image\n")
    png_header_only_giant(folder / "giant.png")
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "no such file.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "up").symlink_to(folder.parent, target_is_directory=True)
    fd = os.open(os.fsencode(folder) + b"/" + NON_UTF8, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (folder / "with space.png").read_bytes())
    os.close(fd)
    bad = {"empty.jpg": "empty file", "truncated.jpg": "truncated file", "text.jpg": "not an image",
           "giant.png": "too large (20000x20000 pixels", "fifo.jpg": "not a regular file",
           "dangling.jpg": "broken symbolic link", "loop.jpg": "symbolic link loop",
           "up": "symbolic link loop", os.fsdecode(NON_UTF8): "not valid UTF-8"}
    if not ROOT_USER:
        locked = folder / "locked.jpg"
        Image.fromarray(picture(41)).save(locked)
        locked.chmod(0)
        bad["locked.jpg"] = "permission denied"
    return bad


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder (4 identities of gratings, a 'mixed' folder of every kind, an all-bad folder), a model, an index."""
    import torch

    from siamsearch.core.checkpoint import save_model
    from siamsearch.core.config import EncoderConfig
    from siamsearch.core.model import build_encoder

    base = tmp_path_factory.mktemp("bad")
    data = make_identities(base / "data", n_ids=4, per_id=6, size=32)
    mixed = data / "mixed"
    mixed.mkdir()
    good = sorted(data.glob("id*/*.png")) + write_good_kinds(mixed)
    bad = {f"mixed/{k}": v for k, v in write_bad_kinds(mixed).items()}
    allbad = data / "allbad"
    allbad.mkdir()
    (allbad / "empty.png").write_bytes(b"")
    (allbad / "text.png").write_text("<html></html>")
    bad |= {"allbad/empty.png": "empty file", "allbad/text.png": "not an image"}
    (mixed / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (mixed / "._x.jpg").write_bytes(b"\0\5\26\7AppleDouble")
    reference = base / "upright.jpg"  # the rotated picture stored upright, outside the indexed folder
    Image.fromarray(upright()).save(reference, quality=100, subsampling=0)
    sideways = base / "sideways.jpg"  # the rotated file's pixels without their orientation
    Image.fromarray(upright()).transpose(Image.Transpose.ROTATE_90).save(sideways, quality=100, subsampling=0)
    torch.manual_seed(0)
    model = base / "m.pt"
    save_model(model, build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)))
    index = base / "index"
    res = run_cli("index", data, "--model", model, "--index", index, "--workers", 0, "--json")
    yield {"base": base, "data": data, "good": good, "bad": bad, "model": model, "index": index, "res": res,
           "reference": reference, "sideways": sideways}
    for p in mixed.rglob("*"):  # let pytest clean up
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def no_traceback(res) -> None:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def one_line_error(res, code: int, words: str = "") -> None:
    """The exit code, a single 'error:' line on stderr holding words, and no traceback."""
    no_traceback(res)
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], res.stderr


def check_failures(failures: list[dict], data: Path, bad: dict[str, str]) -> None:
    """Each bad file listed once, with a one-line reason holding the expected words; nothing else listed."""
    listed = [os.path.relpath(f["path"], data) for f in failures]
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == sorted(bad), (sorted(listed), sorted(bad))
    for f, rel in zip(failures, listed):
        assert bad[rel] in f["reason"] and "\n" not in f["reason"], (rel, f["reason"])


# ---- index ---------------------------------------------------------------------------------------------------


def test_index_skips_each_bad_file_once_and_indexes_every_good_one(world):
    res = world["res"]
    no_traceback(res)
    assert res.exit_code == 1, res.output
    summary = json.loads(res.stdout)
    check_failures(summary["failures"], world["data"], world["bad"])
    assert summary["count"] == summary["added"] == len(world["good"])
    assert "DS_Store" not in res.output and "._x" not in res.output
    assert f"skipped {len(world['bad'])} unreadable file(s)" in res.stderr
    table = run_cli("query", world["data"] / "mixed" / "new\nline.png", "--index", world["index"], "-k", 1)
    assert table.exit_code == 0 and "new\\nline.png" in table.stdout and "new\nline" not in table.output


def test_every_good_file_is_its_own_nearest_neighbour(world):
    res = run_cli("query", *world["good"], "--index", world["index"], "-k", 2, "--json")
    no_traceback(res)
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)
    assert [r["query"] for r in results] == [str(p) for p in world["good"]]
    for r in results:
        first = r["neighbors"][0]
        assert first["path"] == os.path.relpath(r["query"], world["data"]), r
        assert first["distance"] < 1e-3, r
        assert r["neighbors"][1]["distance"] > first["distance"], r


def test_an_exif_rotated_jpeg_embeds_as_the_upright_picture(world):
    res = run_cli("query", world["reference"], world["sideways"], "--index", world["index"], "-k", 1, "--json")
    assert res.exit_code == 0, res.output
    upright_hit, sideways_hit = (r["neighbors"][0] for r in json.loads(res.stdout))
    assert upright_hit["path"] == "mixed/rotated.jpg" and upright_hit["distance"] < 0.02, upright_hit
    assert sideways_hit["path"] != "mixed/rotated.jpg" or sideways_hit["distance"] > 0.1, sideways_hit


def test_querying_bad_files_lists_each_once_and_exits_1(world):
    data, bad = world["data"], world["bad"]
    named = [data / rel for rel in bad if rel not in ("mixed/up", f"mixed/{os.fsdecode(NON_UTF8)}")]
    res = run_cli("query", *named, world["good"][0], "--index", world["index"], "--json")
    no_traceback(res)
    assert res.exit_code == 1, res.output
    assert len(json.loads(res.stdout)) == 1
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: cannot read")]
    assert len(lines) == len(named) == len(set(lines)), res.stderr
    res = run_cli("query", data / "mixed", "--index", world["index"], "--json")  # a folder: the scan's finds too
    no_traceback(res)
    assert res.exit_code == 1, res.output
    for rel in ("fifo.jpg", "dangling.jpg", "loop.jpg", "giant.png"):
        assert sum(rel in line for line in res.stderr.splitlines()) == 1, (rel, res.stderr)


def test_a_fifo_is_never_opened(world):
    from siamsearch.core.images import BadImageError, load_image

    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(world["data"] / "mixed" / "fifo.jpg")  # opening it would wait for a writer forever


@pytest.mark.skipif(ROOT_USER, reason="root reads a chmod 000 file: there is nothing unreadable to test")
def test_an_unreadable_file_is_skipped(world):
    reasons = {os.path.relpath(f["path"], world["data"]): f["reason"]
               for f in json.loads(world["res"].stdout)["failures"]}
    assert reasons["mixed/locked.jpg"] == "permission denied"


# ---- dedup, train, eval ----------------------------------------------------------------------------------------


def test_dedup_over_the_odd_names_reads_no_file_and_escapes_them(world, tmp_path):
    page = tmp_path / "d.html"
    res = run_cli("dedup", "--index", world["index"], "--margin", 2.0, "--json", "--html", page)
    no_traceback(res)
    assert res.exit_code == 0, res.output
    groups = json.loads(res.stdout)["groups"]
    paths = {g["keep"] for g in groups} | {m["path"] for g in groups for m in g["members"]}
    assert "mixed/<script>.png" in paths and "mixed/new\nline.png" in paths
    assert "<script>.png" not in page.read_text() and "&lt;script&gt;.png" in page.read_text()


def test_train_and_eval_skip_each_bad_file_once(world, tmp_path):
    data = world["data"]
    decodable = {rel: why for rel, why in world["bad"].items() if "UTF-8" not in why}  # train and eval use it
    res = run_cli("train", data, "--out", tmp_path / "t.pt", "--epochs", 1, "--image-size", 32, "--dim", 16,
                  "-P", 4, "-K", 2, "--workers", 0, "--json")
    no_traceback(res)
    assert res.exit_code == 1, res.output
    check_failures(json.loads(res.stdout)["failures"], data, decodable)
    res = run_cli("eval", data, "--model", tmp_path / "t.pt", "--workers", 0, "--episodes", 5, "--json")
    no_traceback(res)
    assert res.exit_code == 1, res.output
    check_failures(json.loads(res.stdout)["failures"], data, decodable)


# ---- command misuse: the right exit code, one line, no traceback -----------------------------------------------


@pytest.fixture(scope="module")
def other_model(world):
    import torch

    from siamsearch.core.checkpoint import save_model
    from siamsearch.core.config import EncoderConfig
    from siamsearch.core.model import build_encoder

    torch.manual_seed(1)
    path = world["base"] / "other.pt"
    save_model(path, build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)))
    return path


def test_missing_index_image_or_folder_is_a_usage_error(world, tmp_path):
    good = world["good"][0]
    one_line_error(run_cli("query", good, "--index", tmp_path / "none"), 2, "not a siamsearch index")
    one_line_error(run_cli("query", tmp_path / "none.jpg", "--index", world["index"]), 2, "none.jpg")
    one_line_error(run_cli("index", tmp_path / "none", "--model", world["model"], "--index", tmp_path / "i"), 2,
                   "no such folder")
    one_line_error(run_cli("index", world["data"], "--model", tmp_path / "none.pt", "--index", tmp_path / "i"), 2,
                   "none.pt")
    one_line_error(run_cli("dedup", "--index", tmp_path / "none", "--margin", 0.1), 2)
    one_line_error(run_cli("eval", tmp_path / "none", "--model", world["model"]), 2, "no such folder")


@pytest.mark.parametrize("content", [os.urandom(4096), b"this is a model, honest\n"], ids=["random", "text"])
def test_a_model_file_that_is_not_a_model(world, tmp_path, content):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(content)
    one_line_error(run_cli("index", world["data"], "--model", bogus, "--index", tmp_path / "i"), 2, "bogus.pt")
    one_line_error(run_cli("query", world["good"][0], "--index", world["index"], "--model", bogus), 2, "bogus.pt")
    one_line_error(run_cli("eval", world["data"], "--model", bogus), 2, "bogus.pt")
    assert not (tmp_path / "i").exists()


def test_another_model_is_refused(world, other_model, tmp_path):
    good = world["good"][0]
    one_line_error(run_cli("query", good, "--index", world["index"], "--model", other_model), 3)
    other = tmp_path / "other"
    res = run_cli("index", world["data"] / "id00", "--model", other_model, "--index", other, "--workers", 0)
    assert res.exit_code == 0, res.output
    one_line_error(run_cli("dedup", "--index", world["index"], "--margin", 0.1, "--against", other), 3)
    one_line_error(run_cli("index", world["data"] / "id00", "--model", world["model"], "--index", other), 3)


def test_bad_numbers(world):
    good, idx = world["good"][0], world["index"]
    for args in (["query", good, "--index", idx, "-k", 0], ["query", good, "--index", idx, "-k", -1],
                 ["query", good, "--index", idx, "--margin", -0.1], ["query", good, "--index", idx, "--margin", 2.1],
                 ["dedup", "--index", idx, "--margin", -1], ["dedup", "--index", idx, "--margin", 3]):
        res = run_cli(*args)
        no_traceback(res)
        assert res.exit_code == 2, (args, res.output)
    one_line_error(run_cli("dedup", "--index", idx, "--margin", 0.5, "--review-margin", 0.2), 2, "review")
    res = run_cli("query", good, "--index", idx, "-k", 10**12, "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)[0]["neighbors"]) == len(world["good"])


def test_undo_of_a_missing_an_edited_and_an_undone_manifest(world, tmp_path):
    one_line_error(run_cli("undo", tmp_path / "none.json"), 2, "no such manifest")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c", "d"):
        Image.fromarray(picture(50 + ord(name) % 2)).save(photos / f"{name}.png")  # a = c, b = d
    os.utime(photos / "a.png", ns=(10**18, 10**18))  # keep a and b: the oldest of each group
    os.utime(photos / "b.png", ns=(10**18, 10**18))
    idx, dups = tmp_path / "idx", tmp_path / "dups"
    assert run_cli("index", photos, "--model", world["model"], "--index", idx, "--workers", 0).exit_code == 0
    moved = run_cli("dedup", "--index", idx, "--margin", 1e-4, "--keep", "oldest", "--move-to", dups, "--yes",
                    "--json")
    assert moved.exit_code == 0, moved.output
    moves = json.loads(moved.stdout)["moves"]
    assert sorted(moves["done"]) == ["c.png", "d.png"]
    (dups / "c.png").write_bytes(b"edited")
    res = run_cli("undo", moves["manifest"], "--json")
    no_traceback(res)
    assert res.exit_code == 1, res.output
    done = json.loads(res.stdout)
    assert done["done"] == ["d.png"] and [s["path"] for s in done["skipped"]] == ["c.png"]
    assert "changed since it was moved" in done["skipped"][0]["reason"]
    assert (photos / "d.png").is_file() and not (photos / "c.png").exists()
    res = run_cli("undo", moves["manifest"], "--json")  # again: d is already back, c is still edited
    no_traceback(res)
    assert res.exit_code == 1, res.output
    again = json.loads(res.stdout)
    assert (again["done"], again["already"], [s["path"] for s in again["skipped"]]) == ([], ["d.png"], ["c.png"])
    Image.fromarray(picture(50 + ord("c") % 2)).save(dups / "c.png")  # the edit undone: the bytes moved
    assert run_cli("undo", moves["manifest"]).exit_code == 0 and (photos / "c.png").is_file()
    res = run_cli("undo", moves["manifest"])  # an undone manifest: everything is back, nothing to do
    no_traceback(res)
    assert res.exit_code == 0 and "restored 0 file(s), 2 already back, skipped 0" in res.stdout, res.output
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]


def test_eval_needs_two_identities_with_two_images(world, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(world["data"] / "id00", one / "id00")
    one_line_error(run_cli("eval", one, "--model", world["model"], "--workers", 0), 2, "at least 2 identity")
    singles = tmp_path / "singles"
    for i in range(3):
        (singles / f"id{i}").mkdir(parents=True)
        shutil.copy(world["good"][i * 6], singles / f"id{i}" / "0.png")
    one_line_error(run_cli("eval", singles, "--model", world["model"], "--workers", 0), 2, "2+ readable images")


# ---- the machine: shared memory, a full disk; a broken index rebuilt ------------------------------------------


def contents(index: Path) -> tuple[list[tuple[int, str]], np.ndarray]:
    """What an index holds: its rows' ids and paths, and its vectors."""
    from siamsearch.index.store import Store

    with Store.open(index) as store:
        return [(row.id, row.path) for row in store.iter_rows()], store.vectors()[1]


def small_index(model: Path, root: Path) -> tuple[Path, Path]:
    """(a folder of 4 images, its index under root made with model)."""
    data, index = make_identities(root / "data", n_ids=2, per_id=2, size=32), root / "index"
    assert run_cli("index", data, "--model", model, "--index", index, "--workers", 0).exit_code == 0
    return data, index


def test_workers_out_of_shared_memory_end_the_run_in_one_line_and_leave_the_index(model_file, tmp_path):
    data, index = small_index(model_file, tmp_path)
    rows, vectors = contents(index)
    make_identities(data / "new", n_ids=1, per_id=30, size=32, seed=1)  # one batch of 90 KB to hand over
    limit = 64 * 1024  # the file-size limit stops a worker writing a batch to /dev/shm, as a full one does
    done = subprocess.run([sys.executable, "-m", "siamsearch", "index", str(data), "--index", str(index),
                           "--workers", "2"], capture_output=True, text=True, timeout=120,
                          preexec_fn=partial(resource.setrlimit, resource.RLIMIT_FSIZE, (limit, limit)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "--workers 0" in lines[0] and "/dev/shm" in lines[0], lines[0]
    assert contents(index)[0] == rows and np.array_equal(contents(index)[1], vectors)


@pytest.mark.parametrize("full", [sqlite3.OperationalError("database or disk is full"),
                                  OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))], ids=["sqlite", "enospc"])
def test_a_full_disk_is_said_and_the_index_is_not_called_unreadable(model_file, tmp_path, monkeypatch, full):
    from siamsearch.index import folder as indexdir

    data, index = small_index(model_file, tmp_path)
    (data / "id00" / "new.png").write_bytes((data / "id01" / "0.png").read_bytes() + b"\0")

    def refuse(*args, **kwargs):
        raise full

    monkeypatch.setattr(*(sqlite3, "connect") if isinstance(full, sqlite3.Error) else (indexdir, "exclusive_lock"),
                        refuse)
    runs = [run_cli("index", data, "--index", index, "--workers", 0)]
    if isinstance(full, sqlite3.Error):  # a query takes no lock: only opening the rows can meet a full disk
        runs.append(run_cli("query", data / "id00" / "0.png", "--index", index))
    for res in runs:
        one_line_error(res, 2, f"the disk holding the index {index} is full")
        assert "--rebuild" not in res.stderr and "unreadable" not in res.stderr, res.stderr
    monkeypatch.undo()
    assert len(contents(index)[0]) == 4


def test_rebuilding_a_truncated_index_uses_the_model_its_manifest_names(model_file, tmp_path):
    data, index = small_index(model_file, tmp_path / "far" / "from" / "the model")
    fingerprint = json.loads((index / "manifest.json").read_text())["fingerprint"]
    (index / "index.faiss").write_bytes((index / "index.faiss").read_bytes()[:100])
    res = run_cli("index", data, "--index", index, "--rebuild", "--workers", 0, "--json")
    no_traceback(res)
    assert res.exit_code == 0 and json.loads(res.stdout)["count"] == 4, res.output
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint and manifest["model"] == str(model_file.resolve())


def test_query_html_of_an_image_whose_name_is_not_utf8_writes_the_page_with_the_name_escaped(world, tmp_path):
    query = Path(os.fsdecode(os.fsencode(tmp_path) + b"/q" + NON_UTF8))  # Latin-1 bytes on disk (item 18)
    query.write_bytes(Path(world["good"][0]).read_bytes())
    page = tmp_path / "q.html"
    res = run_cli("query", query, "--index", world["index"], "-k", 2, "--html", page)
    no_traceback(res)
    assert res.exit_code == 0, res.output
    assert "qcaf\\udce9.png" in page.read_text(encoding="utf-8")
