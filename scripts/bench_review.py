"""How fast `siamsearch review` opens and pages over a large index, and a screenshot of it on sample photos.

1. An index of 20,000 small image files planted as 10,000 pairs of copies (vectors planted, nothing embedded:
   the page's speed, not the encoder's, is measured), reviewed in Chromium through playwright: the seconds from
   the page's request to its first groups drawn with their thumbnails, and for the next page.
2. --screenshot FILE: scikit-image's sample photos with planted copies (siamsearch.core.samples.build_photos),
   indexed with the built-in model as a user would, and the review page photographed.

    .venv/bin/python scripts/bench_review.py
    .venv/bin/python scripts/bench_review.py --screenshot examples/review_page.jpg --groups 0
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

from siamsearch.core.embed import EmbedResult
from siamsearch.core.samples import build_photos
from siamsearch.index.indexing import index_folder, sync
from siamsearch.index.store import Store
from siamsearch.review import Review, serve

DIM = 64
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def planted_index(folder: Path, groups: int) -> Path:
    """An index of 2 x groups tiny PNGs, file 2i and 2i+1 a pair of copies 0.05 apart, every pair far from the rest."""
    root = folder / "files"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((groups, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.repeat(centres, 2, axis=0)
    vectors[1::2] += 0.035 * rng.standard_normal((groups, DIM)).astype(np.float32) / np.sqrt(DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i in range(2 * groups):
        Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 256, 3))).save(root / f"v{i:06d}.png")
    store = Store.create(folder / "index", dim=DIM, fingerprint="b" * 16, encoder={"dim": DIM}, model_path=None,
                         root=root)

    def stream(paths):
        for start in range(0, len(paths), 4096):
            part = list(paths[start:start + 4096])
            yield EmbedResult(part, vectors[[int(p.stem[1:]) for p in part]], [(32, 32)] * len(part))

    sync(store, stream)
    store.close()
    return folder / "index"


def timed_page(index: Path, margin: float) -> None:
    """Serve the review page of index and time it in Chromium: search, first page, next page."""
    t0 = time.perf_counter()
    server = serve(Review(index, margin=margin, keep="first"))
    searched = time.perf_counter() - t0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.perf_counter()
        page.goto(server.url)
        page.wait_for_selector("section.group")
        page.locator("section.group img").first.evaluate("i => i.decode()")  # the first thumbnail drawn
        opened = time.perf_counter() - t0
        counts = page.inner_text("#counts")
        t0 = time.perf_counter()
        page.click("#next")
        page.wait_for_selector("#pos:has-text('51–100')")
        paged = time.perf_counter() - t0
        shown = page.locator("section.group").count()
        browser.close()
    server.stop()
    print(f"groups found before the page opened in {searched:.1f}s ({counts})")
    print(f"page opened in {opened:.2f}s with {shown} groups drawn; next page in {paged:.2f}s")


def screenshot(out: Path, work: Path) -> None:
    """The review page of the sample photos with planted copies, indexed with the built-in model."""
    photos, _, _ = build_photos(work / "data")
    index_folder(photos, work / "index")
    server = serve(Review(work / "index", review_margin=1.1))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("section.group")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(out), quality=80 if out.suffix in (".jpg", ".jpeg") else None)
        browser.close()
    server.stop()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=10_000, help="pairs of copies in the timed index (0: skip)")
    parser.add_argument("--screenshot", type=Path, help="also photograph the page of the sample photos here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="siamsearch-review-") as tmp:
        if args.groups:
            t0 = time.perf_counter()
            index = planted_index(Path(tmp) / "planted", args.groups)
            print(f"{2 * args.groups:,} files in {args.groups:,} pairs indexed in {time.perf_counter() - t0:.1f}s")
            timed_page(index, margin=0.1)
        if args.screenshot:
            screenshot(args.screenshot, Path(tmp) / "shot")


if __name__ == "__main__":
    main()
