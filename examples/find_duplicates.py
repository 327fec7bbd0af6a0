"""Index a folder, query it and list its duplicate groups from Python (the CLI's steps 1-3).

    python examples/find_duplicates.py ~/photos [--model photos.pt] [query.jpg]

Without a model the built-in near-duplicate model is used; with one, any file written by `siamsearch
train`. The index goes to indexes/<folder name>/ and a second run embeds only new and changed files.
"""

import argparse
from pathlib import Path

from siamsearch import Searcher, default_margin, find_duplicates, index_folder


def main(folder: Path, model: Path | None, query: Path | None) -> None:
    """Print what was indexed, the query's neighbours and each duplicate group with the file it keeps."""
    index_dir = Path("indexes") / folder.resolve().name
    store, report = index_folder(folder, index_dir, model)
    print(f"{len(store)} images; added {report.added}, skipped {len(report.failures)} unreadable")
    with store:
        groups = find_duplicates(store, default_margin(store).margin).groups
    if query is not None:
        results, _ = Searcher.open(index_dir).query_images([query], k=5)
        for hit in results[0].neighbors:
            print(f"{hit.rank}  {hit.distance:.3f}  {hit.path}")
    for g in groups:
        print(f"keep {g.keep.path}: " + ", ".join(f"{m.path} ({m.status}, {m.distance:.3f})" for m in g.members))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("query", type=Path, nargs="?")
    parser.add_argument("--model", type=Path, help="a model file (default: the built-in near-duplicate model)")
    args = parser.parse_intermixed_args()
    main(args.folder, args.model, args.query)
