"""A real headless browser opens the HTML pages: every thumbnail decodes, nothing is fetched.

Needs Debian's `chromium` (`.ci/run` installs it); skipped with the reason when it is missing.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from siamsearch.index.indexing import index_folder
from siamsearch.report import query_page
from siamsearch.index.search import Neighbor, QueryResult

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

# Appended to a copy of the page: after load, count images that decoded (naturalWidth > 0) and those that did not.
COUNTER = """<script>window.addEventListener("load", () => {
  const images = [...document.images], ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.loaded = ok; document.body.dataset.failed = images.length - ok;
});</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless chromium with a throwaway profile; returns stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def rendered(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images that decoded, images that failed) when chromium loads a copy of the page."""
    probe = tmp_path / f"probe_{page.name}"
    probe.write_text(page.read_text().replace("</body>", COUNTER + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    counts = re.search(r'data-loaded="(\d+)" data-failed="(\d+)"', dom)
    assert counts, dom[:300]
    return int(counts[1]), int(counts[2])


def test_query_page_renders_every_image_in_chromium(identity_dir, tmp_path):
    results = [QueryResult(identity_dir / f"id{q:02d}" / "0.png",
                           [Neighbor(r, f"id{q:02d}/{r}.png", 0.1 * r, f"id{q:02d}", r) for r in range(1, 5)]
                           + [Neighbor(5, "gone.png", 0.9, None, 99)]) for q in range(3)]
    page = query_page(results, identity_dir, tmp_path / "q.html")
    assert rendered(page, tmp_path) == (15, 0)  # 3 queries + 3 x 4 neighbours; the missing file is a text box

    shot = tmp_path / "q.png"
    chromium(tmp_path, "--window-size=1000,800", f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1000, 800)
        assert np.asarray(img.convert("L")).std() > 10  # thumbnails and text, not a blank page


def test_dedup_page_of_a_real_index_renders_in_chromium(identity_dir, model_file, tmp_path):
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    page = tmp_path / "d.html"
    res = run_cli("dedup", "--index", tmp_path / "idx", "--margin", 0.5, "--json", "--html", page)
    assert res.exit_code == 0, res.output
    shown = sum(1 + len(g["members"]) for g in json.loads(res.stdout)["groups"])
    assert shown > 0 and rendered(page, tmp_path) == (shown, 0)


@pytest.mark.slow
def test_the_demos_pages_render_in_chromium(demo_run, tmp_path):
    for name in ("query_html", "dedup_html"):
        loaded, failed = rendered(demo_run.files[name], tmp_path)
        assert loaded > 10 and failed == 0, name
