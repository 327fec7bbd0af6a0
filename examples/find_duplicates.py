"""Index a folder, query it and list its duplicate groups from Python (the CLI's steps 2-4).

    python examples/find_duplicates.py ~/photos photos.pt [query.jpg]

The model is any file written by `siamsearch train`; the index goes to indexes/<folder name>/ and a
second run embeds only new and changed files.
"""

import sys
from pathlib import Path

from siamsearch import Searcher, default_margin, find_duplicates, index_folder


def main(folder: Path, model: Path, query: Path | None) -> None:
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
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
