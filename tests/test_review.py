"""The review page in a real Chromium, with real clicks: decisions remembered by the index, the CLI honouring them,
moves and undo from the page, and the page's guards (token, thumbnails by row id, names as text).

Needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` package (the test extra), pointed at that
Chromium: no browser download. Skipped with the reason when either is missing.
"""

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import DIM
from conftest import run_cli as run
from PIL import Image

from siamsearch.core.embed import EmbedResult
from siamsearch.index.indexing import sync
from siamsearch.review import Review, serve

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
HOSTILE = "<img src=x onerror=alert(1)>.png"
FILES = {  # name → (colour, side, the planted vector's cluster, its offset): copies sit 0.04 from their original
    "a.png": ("red", 64, 0, 0), "a_copy.png": ("red", 48, 0, 1),
    "b.png": ("green", 64, 1, 0), "b_copy.png": ("green", 40, 1, 1), "b_big.png": ("green", 128, 1, 2),
    "c.png": ("blue", 64, 2, 0), HOSTILE: ("blue", 56, 2, 1), "x.png": ("yellow", 64, 3, 0),
}


def vector(cluster: int, offset: int) -> np.ndarray:
    """A unit vector near axis `cluster`, `offset` small steps along another axis."""
    v = np.zeros(DIM, np.float32)
    v[cluster], v[DIM - 1 - offset] = 1.0, 0.02 * (offset > 0)
    return v / np.linalg.norm(v)


def embed_planted(paths):
    """The embedding stream of these files: each file's planted vector, whatever its folder."""
    yield EmbedResult(list(paths), np.stack([vector(*FILES[Path(p).name][2:]) for p in paths]), [(1, 1)] * len(paths))


@pytest.fixture
def reviewed(tmp_path, new_store):
    """An index of FILES (three groups of copies and one lone file) and its review page in Chromium."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, (colour, side, *_) in FILES.items():
        Image.new("RGB", (side, side), colour).save(root / name)
    store = new_store(root)
    sync(store, embed_planted)
    server = serve(Review(store.path, margin=0.1, keep="first"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        page.wait_for_selector("section.group")
        yield {"page": page, "store": store, "root": root, "server": server, "dialogs": dialogs}
        browser.close()
    server.stop()


def group_of(page, path: str):
    """The page's group holding the file at path."""
    return page.locator("section.group", has=page.locator(f'figure[data-path="{path}"]'))


def cli_groups(store) -> list[set[str]]:
    """The groups `siamsearch dedup --json` reports, each as its set of paths."""
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--json")
    assert res.exit_code == 0, res.output
    return [{g["keep"], *(m["path"] for m in g["members"])} for g in json.loads(res.stdout)["groups"]]


def test_not_duplicates_from_the_page_stays_gone_after_a_reload_the_cli_and_a_rename(reviewed):
    page, store, root = reviewed["page"], reviewed["store"], reviewed["root"]
    group_of(page, "a.png").locator("button.not-dups").click()
    page.wait_for_timeout(300)
    page.reload()
    page.wait_for_selector("section.group")
    assert page.locator('figure[data-path="a.png"]').count() == 0
    assert {"a.png", "a_copy.png"} not in cli_groups(store)
    (root / "moved").mkdir()
    (root / "a_copy.png").rename(root / "moved" / "a_copy.png")  # the same bytes under another name
    sync(store, embed_planted, prune=True)
    assert not any("a.png" in g for g in cli_groups(store))


def test_keep_this_on_a_member_is_what_the_cli_move_plan_keeps(reviewed, tmp_path):
    page, store = reviewed["page"], reviewed["store"]
    page.locator('figure[data-path="b_copy.png"] button.keep-this').click()
    page.wait_for_timeout(300)
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--move-to", tmp_path / "dups",
              "--json")
    moves = json.loads(res.stdout)["moves"]["done"]
    assert "b_copy.png" not in moves and {"b.png", "b_big.png"} <= set(moves)


def test_bulk_keep_largest_decides_every_undecided_group(reviewed):
    page, store = reviewed["page"], reviewed["store"]
    page.select_option("#rule", "largest")
    page.click("#bulk")
    page.wait_for_selector("#status:has-text('kept by rule in 3 group')")
    res = run("decisions", "--index", store.path, "--json")
    assert sorted(d["a_path"] for d in json.loads(res.stdout)) == sorted(["a.png", "b_big.png", "c.png"])
    playwright.expect(page.locator("section.group")).to_have_count(0)  # "undecided" only: none left, once reloaded


def test_move_then_undo_from_the_page_puts_every_file_back(reviewed, tmp_path):
    page, root = reviewed["page"], reviewed["root"]
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    page.fill("#dest", str(tmp_path / "dups"))
    page.click("#move")
    page.wait_for_selector("#status:has-text('moved 4 file(s)')")
    assert not (root / "a_copy.png").exists() and (tmp_path / "dups" / "a_copy.png").is_file()
    page.click("#undo")
    page.wait_for_selector("#status:has-text('put back 4 file(s)')")
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_no_token_no_answer_thumbnails_by_row_id_only_and_a_hostile_name_shows_as_text(reviewed):
    page, server = reviewed["page"], reviewed["server"]
    base = server.url.split("?")[0]
    token = server.url.split("token=")[1]
    for url in (base, base + "api/groups", base + "thumb/1"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url)
        assert refused.value.code == 403
    for path in ("thumb/..%2F..%2Fetc%2Fpasswd", "thumb/%2Fetc%2Fpasswd", "thumb/99999"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}{path}?token={token}")
        assert refused.value.code == 404
    post = urllib.request.Request(base + "api/decide", data=b'{"kind": "keep", "ids": [1]}',
                                  headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post)  # no X-Token header: a form on another site could not send one either
    assert refused.value.code == 403
    caption = page.locator(f'figure[data-path="{HOSTILE}"] .path')
    assert caption.inner_text() == HOSTILE and page.locator('img[src="x"]').count() == 0
    assert reviewed["dialogs"] == []
    assert page.evaluate("[...document.images].filter(i => i.src.includes('/thumb/')).every(i => i.naturalWidth > 0)")
