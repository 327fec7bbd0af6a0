"""Dedup: pairs match brute force, groups keep their linkage invariants, moves are undone byte for byte."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import clustered
from conftest import run_cli as run

from siamsearch.core.checkpoint import save_model
from siamsearch.duplicates import closepairs
from siamsearch.commands import dedup_index
from siamsearch.duplicates.closepairs import find_pairs
from siamsearch.duplicates.linkage import group, max_distance
from siamsearch.core.config import EncoderConfig
from siamsearch.duplicates.dedup import (
    DedupError,
    DedupResult,
    Group,
    Member,
    choose_keep,
    find_duplicates,
    find_duplicates_in,
    keep_ranks,
)
from siamsearch.core.errors import ModelMismatchError
from siamsearch.core.model import build_encoder
from siamsearch.duplicates.moves import apply_moves, plan_moves, undo_moves
from siamsearch.index.rows import NewRow, Row
from siamsearch.index.store import Store


def make_store(folder: Path, vectors: np.ndarray, fingerprint: str = "f" * 16, model: Path | None = None,
               kind: str = "flat") -> Store:
    """A flat store whose file d{i%3}/v{i:04d}.png (distinct bytes, i+1 lines) holds vectors[i]."""
    root = folder / "images"
    for i in range(len(vectors)):
        path = root / f"d{i % 3}" / f"v{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"image {i}\n".encode() * (i + 1))
    store = Store.create(folder / "index", dim=vectors.shape[1], fingerprint=fingerprint, encoder={},
                         model_path=str(model) if model else None, root=root, index_kind=kind)
    files = [root / f"d{i % 3}" / f"v{i:04d}.png" for i in range(len(vectors))]
    rows = [NewRow(f.relative_to(root).as_posix(), f.parent.name, f.stat().st_size, f.stat().st_mtime_ns, 1, 1)
            for f in files]
    with store.writing():
        store.add(rows, vectors)
    return store


def index_of(path: str) -> int:
    """d1/v0042.png -> 42."""
    return int(Path(path).stem[1:])


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(seed: int = 0, dim: int = 16) -> np.ndarray:
    """30 random unit vectors, then 4 near copies of vectors 0-3 (distance ~0.03) and one of vector 4 at ~0.15."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((30, dim)))
    near = unit(base[:4] + 0.03 / np.sqrt(dim) * rng.standard_normal((4, dim)))
    farther = unit(base[4:5] + 0.15 / np.sqrt(dim) * rng.standard_normal((1, dim)))
    return np.concatenate([base, near, farther])


def pairwise(x: np.ndarray) -> np.ndarray:
    """All Euclidean distances, the slow, obvious way."""
    return np.sqrt(((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- pairs and groups -----------------------------------------------------------------------------


def test_pairs_match_brute_force_in_any_block_size(tmp_path):
    x = clustered(300)
    dist = pairwise(x)
    radius = float(np.quantile(dist[np.triu_indices(300, 1)], 0.02))
    store = make_store(tmp_path, x)
    to_index = {r.id: index_of(r.path) for r in store.iter_rows()}
    i, j, d = find_pairs(store, radius)
    assert np.all(i < j) and len(set(zip(i.tolist(), j.tolist()))) == len(i)
    found = {tuple(sorted((to_index[a], to_index[b]))): dd for a, b, dd in zip(i.tolist(), j.tolist(), d.tolist())}
    pairs = {(a, b): dist[a, b] for a, b in zip(*np.nonzero(dist < radius + 1e-4)) if a < b}
    assert {p for p, dd in pairs.items() if dd < radius - 1e-4} <= set(found) <= set(pairs)
    assert all(abs(found[p] - pairs[p]) < 1e-4 for p in found)
    small = find_pairs(store, radius, block=7)
    assert all(np.array_equal(a, b) for a, b in zip(small, (i, j, d)))


def components_oracle(n: int, edges: list[tuple[int, int]]) -> set[frozenset[int]]:
    """Connected components by boolean matrix closure (reachability), components of two or more."""
    reach = np.eye(n, dtype=bool)
    for a, b in edges:
        reach[a, b] = reach[b, a] = True
    while True:
        grown = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
        if np.array_equal(grown, reach):
            break
        reach = grown
    return {frozenset(np.flatnonzero(row).tolist()) for row in reach if row.sum() > 1}


def test_single_linkage_is_connected_components_and_complete_linkage_stays_within_the_radius(tmp_path):
    x = clustered(200, seed=3)
    dist = pairwise(x)
    radius = float(np.quantile(dist[np.triu_indices(200, 1)], 0.01))
    store = make_store(tmp_path, x)
    to_index = {r.id: index_of(r.path) for r in store.iter_rows()}
    pairs = find_pairs(store, radius)
    ids, vectors = store.vectors(np.unique(np.concatenate(pairs[:2])))
    as_sets = lambda groups: {frozenset(to_index[k] for k in g.tolist()) for g in groups}  # noqa: E731

    single = as_sets(group(pairs, ids, vectors, radius, "single"))
    assert single == components_oracle(200, [(to_index[a], to_index[b]) for a, b in zip(*map(list, pairs[:2]))])
    assert max(dist[np.ix_(list(g), list(g))].max() for g in single) > radius  # chains do happen here

    complete = as_sets(group(pairs, ids, vectors, radius, "complete"))
    assert len(complete) > len(single)
    for g in complete:
        assert dist[np.ix_(list(g), list(g))].max() <= radius + 1e-6
        assert any(g <= s for s in single)
    members = [k for g in complete for k in g]
    assert len(members) == len(set(members))


def test_kept_linkage_adds_lone_files_to_the_nearest_kept_file_and_never_merges_groups(tmp_path):
    x = clustered(200, seed=3)
    dist = pairwise(x)
    radius = float(np.quantile(dist[np.triu_indices(200, 1)], 0.01))
    store = make_store(tmp_path, x)
    rows = list(store.iter_rows())
    pairs = find_pairs(store, radius)
    ids, vectors = store.vectors(np.unique(np.concatenate(pairs[:2])))
    at = {r.id: n for n, r in enumerate(rows)}
    rank = keep_ranks([rows[at[k]] for k in ids.tolist()], "largest")  # all one size: by path
    of = lambda k: int(rank[np.searchsorted(ids, k)])  # noqa: E731
    complete = [set(g.tolist()) for g in group(pairs, ids, vectors, radius, "complete")]
    kept = [set(g.tolist()) for g in group(pairs, ids, vectors, radius, "kept", rank)]
    assert sum(map(len, kept)) > sum(map(len, complete))  # lone files joined here
    assert sorted(map(sorted, (g & c for g in kept for c in complete if g & c))) == sorted(map(sorted, complete))
    keeper = {k: min(g, key=of) for g in kept for k in g}
    for g in kept:
        assert all(dist[index_of(rows[at[k]].path), index_of(rows[at[keeper[k]]].path)] <= radius + 1e-6 for k in g)
    grouped = set().union(*kept)
    for a, b, d in zip(*(c.tolist() for c in pairs)):  # a lone file left out is beside no kept file before it
        for lone, other in ((a, b), (b, a)):
            if lone not in grouped:
                assert not (keeper.get(other) == other and of(other) < of(lone)), (lone, other, d)
    with pytest.raises(ValueError, match="rank"):
        group(pairs, ids, vectors, radius, "kept")


def test_cli_keeps_a_copy_that_is_near_the_kept_file_but_far_from_another_copy(tmp_path):
    # Kept file at 0 (first path), copies at -0.08 and +0.08: each within 0.1 of it, 0.16 from each other.
    x = np.zeros((3, 8), np.float32)
    x[:, 0] = [0.0, -0.08, 0.08]
    store = make_store(tmp_path, x)
    sizes = lambda res: sorted(len(g["members"]) + 1 for g in json.loads(res.stdout)["groups"])  # noqa: E731
    kept = json.loads(run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--json").stdout)
    assert [(g["keep"], len(g["members"])) for g in kept["groups"]] == [("d0/v0000.png", 2)] and not kept["links"]
    complete = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--linkage", "complete",
                   "--json")
    assert sizes(complete) == [2] and len(json.loads(complete.stdout)["links"]) == 1
    largest = run("dedup", "--index", store.path, "--margin", 0.1, "--json")  # the centre is the smallest file
    assert sizes(largest) == [2]  # the group keeps a copy, and the other copy is 0.16 from it: left as a link


def test_cli_groups_by_complete_linkage_unless_told_to_chain(tmp_path):
    # Four points 0.08 apart on a line: each pair of neighbours is within 0.1, the ends are 0.24 apart.
    x = np.zeros((4, 8), np.float32)
    x[:, 0] = np.arange(4) * 0.08
    store = make_store(tmp_path, x)
    sizes = lambda res: sorted(len(g["members"]) + 1 for g in json.loads(res.stdout)["groups"])  # noqa: E731
    assert sizes(run("dedup", "--index", store.path, "--margin", 0.1, "--json")) == [2, 2]
    chained = run("dedup", "--index", store.path, "--margin", 0.1, "--linkage", "single", "--json")
    assert sizes(chained) == [4]
    assert {m["status"] for g in json.loads(chained.stdout)["groups"] for m in g["members"]} == {"duplicate", "review"}


@pytest.mark.parametrize("linkage", ["single", "complete", "kept"])
def test_groups_report_distances_and_statuses_from_the_vectors(tmp_path, linkage):
    x = clustered(120, seed=5)
    dist = pairwise(x)
    margin, review = np.quantile(dist[np.triu_indices(120, 1)], [0.01, 0.03]).tolist()
    result = find_duplicates(make_store(tmp_path, x), margin, review, linkage=linkage, keep="first", crowd=0)
    assert result.groups and (result.margin, result.review_margin, result.approximate) == (margin, review, False)
    statuses = set()
    for g in result.groups:
        members = [index_of(g.keep.path), *(index_of(m.path) for m in g.members)]
        assert g.max_distance == pytest.approx(dist[np.ix_(members, members)].max(), abs=1e-5)
        assert g.keep.path == min(g.keep.path, *(m.path for m in g.members))
        for m in g.members:
            assert m.distance == pytest.approx(dist[members[0], index_of(m.path)], abs=1e-5)
            assert m.status == ("duplicate" if m.distance <= margin else "review")
            statuses.add(m.status)
        if linkage == "complete":
            assert g.max_distance <= review + 1e-6
    assert statuses == {"duplicate", "review"}
    with pytest.raises(DedupError):
        find_duplicates(make_store(tmp_path / "again", x), margin, margin / 2)


def test_max_distance_matches_brute_force_across_blocks():
    x, y = clustered(50, seed=1), clustered(30, seed=2)
    full = np.sqrt(((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)).max()
    assert max_distance(x, y, block=7) == pytest.approx(full, abs=1e-9)


def test_each_keep_policy_and_its_tie_breaks():
    def row(path, wh, size, mtime):
        return Row(0, path, Path(path), None, size, mtime, wh, wh)

    rows = [row("b.png", 100, 10, 3), row("c.png", 100, 20, 1), row("a.png", 10, 50, 2), row("d.png", 10, 50, 3)]
    chosen = {policy: choose_keep(rows, policy).path for policy in ("largest", "smallest", "newest", "oldest", "first")}
    assert chosen == {"largest": "c.png",  # same pixels as b.png, more bytes
                      "smallest": "a.png",  # same pixels and bytes as d.png, first path
                      "newest": "b.png",  # same mtime as d.png, first path
                      "oldest": "c.png", "first": "a.png"}
    with pytest.raises(ValueError, match="keep policy"):
        choose_keep(rows, "biggest")


def test_an_approximate_index_is_flagged_in_json_and_table(tmp_path):
    store = make_store(tmp_path, planted(), kind="hnsw")
    assert store.approximate
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--json")
    data = json.loads(res.stdout)
    assert data["approximate"] is True and len(data["groups"]) == 4
    res = run("dedup", "--index", store.path, "--margin", 0.1)
    assert res.exit_code == 0 and "approximate index" in res.stdout


# ---- moving and undoing -----------------------------------------------------------------------------


def test_dry_run_moves_nothing_and_move_then_undo_restores_every_byte(tmp_path):
    store = make_store(tmp_path, planted())
    root, dest = store.root, tmp_path / "dups"
    result = find_duplicates(store, 0.1, 0.3, keep="largest")
    assert {frozenset([index_of(g.keep.path), *(index_of(m.path) for m in g.members)]) for g in result.groups} \
        == {frozenset({k, 30 + k}) for k in range(4)} | {frozenset({4, 34})}
    assert [g.keep.path for g in result.groups if g.members[0].status == "review"] == ["d1/v0034.png"]  # largest
    before = snapshot(root)

    changed = root / "d2/v0002.png"  # a duplicate edited since it was indexed
    changed.write_bytes(b"edited")
    plan = plan_moves(result, dest)
    assert snapshot(root) == {**before, "d2/v0002.png": b"edited"} and not dest.exists()
    assert sorted(m.path for m in plan.moves) == ["d0/v0000.png", "d0/v0003.png", "d1/v0001.png"]
    assert [(s.path, s.reason) for s in plan.skipped] == [("d2/v0002.png", "changed since it was indexed")]

    report = apply_moves(plan)
    assert sorted(report.done) == sorted(m.path for m in plan.moves)
    assert all(not (root / p).exists() and (dest / p).read_bytes() == before[p] for p in report.done)
    manifest = json.loads(report.manifest.read_text())
    assert manifest["root"] == str(root) and manifest["dest"] == str(dest.resolve()) and manifest["created"]
    assert {m["from"]: m["size"] for m in manifest["moves"]} == {p: len(before[p]) for p in report.done}

    changed.write_bytes(before["d2/v0002.png"])
    undone = undo_moves(report.manifest, root)
    assert sorted(undone.done) == sorted(report.done) and not undone.skipped
    assert snapshot(root) == before


def test_undo_refuses_to_overwrite_and_skips_changed_files(tmp_path):
    store = make_store(tmp_path, planted())
    dest = tmp_path / "dups"
    report = apply_moves(plan_moves(find_duplicates(store, 0.1), dest))
    first, second, *_ = sorted(report.done)
    (store.root / first).write_bytes(b"a new file in the old place")
    (dest / second).write_bytes(b"edited after the move")
    undone = undo_moves(report.manifest, store.root)
    assert {s.path: s.reason.split()[-1] for s in undone.skipped} == {first: "overwritten", second: "moved"}
    assert (store.root / first).read_bytes() == b"a new file in the old place"
    assert (dest / first).exists() and (dest / second).exists() and len(undone.done) == len(report.done) - 2


# ---- against another index ----------------------------------------------------------------------------


def test_against_finds_planted_cross_duplicates_and_refuses_another_model(tmp_path):
    x = planted()[:30]
    rng = np.random.default_rng(9)
    leaked = unit(x[[3, 7, 11]] + 0.02 * rng.standard_normal((3, x.shape[1])))
    other_vectors = np.concatenate([unit(rng.standard_normal((20, x.shape[1]))), leaked])
    mine, other = make_store(tmp_path / "a", x), make_store(tmp_path / "b", other_vectors)
    result = find_duplicates_in(mine, other, 0.1)
    assert [(index_of(p.path), index_of(p.other_path)) for p in result.pairs] == [(3, 20), (7, 21), (11, 22)]
    assert all(p.status == "duplicate" and p.distance < 0.1 for p in result.pairs)
    stranger = make_store(tmp_path / "c", other_vectors, fingerprint="e" * 16)
    with pytest.raises(ModelMismatchError, match="different models"):
        find_duplicates_in(mine, stranger, 0.1)


def shown_duplicates(result) -> set[frozenset[str]]:
    """The pairs a dedup result shows as duplicates: kept file and duplicate, two duplicates of one kept file, links."""
    shown = set()
    for g in result.groups:
        dups = [g.keep.path] + [m.path for m in g.members if m.status == "duplicate"]
        shown.update(frozenset((a, b)) for a in dups for b in dups if a != b)
    return shown | {frozenset((p.path, p.other_path)) for p in result.links}


def test_a_review_margin_never_hides_a_duplicate(tmp_path):
    # A-B 0.483, A-C 0.490, B-C 0.088: at margin 0.3, C is B's duplicate with or without a review band.
    b, c = np.array([0.0, 0.0]), np.array([0.088, 0.0])
    x_a = (0.483**2 - 0.490**2 + 0.088**2) / (2 * 0.088)
    a = np.array([x_a, np.sqrt(0.483**2 - x_a**2)])
    store = make_store(tmp_path, np.stack([a, b, c]).astype(np.float32))
    for review in (None, 0.6):
        result = find_duplicates(store, 0.3, review, keep="first")
        assert frozenset(("d1/v0001.png", "d2/v0002.png")) in shown_duplicates(result), review


@pytest.mark.parametrize("linkage", ["kept", "complete", "single"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_pair_within_the_margin_is_shown_against_brute_force(tmp_path, linkage, seed):
    x = unit(np.random.default_rng(seed).standard_normal((150, 3)))  # dense: many chains and refused merges
    dist = pairwise(x)
    margin, review = np.quantile(dist[np.triu_indices(150, 1)], [0.01, 0.03]).tolist()
    store = make_store(tmp_path, x)
    names = {index_of(r.path): r.path for r in store.iter_rows()}
    truth = {frozenset((names[i], names[j])) for i, j in zip(*np.nonzero(np.triu(dist <= margin, 1)))}
    for review_margin in (None, review):
        shown = shown_duplicates(find_duplicates(store, margin, review_margin, linkage=linkage))
        assert truth <= shown, (review_margin, len(truth - shown))


# ---- the command line ---------------------------------------------------------------------------------


def test_cli_json_follows_the_schema_and_csv_has_a_row_per_member(tmp_path):
    store = make_store(tmp_path, planted())
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--review-margin", 0.3, "--json",
              "--csv", tmp_path / "out.csv")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"margin", "review_margin", "approximate", "groups", "links", "capped", "crowded", "partial", "unverified", "purpose",
                         "decisions_applied"}
    assert data["links"] == [] and data["capped"] == 0
    assert (data["margin"], data["review_margin"], data["approximate"]) == (0.1, 0.3, False)
    assert len(data["groups"]) == 5
    for g in data["groups"]:
        assert set(g) == {"keep", "max_distance", "members"} and (store.root / g["keep"]).is_file()
        for m in g["members"]:
            assert set(m) == {"path", "distance", "status"} and m["status"] in ("duplicate", "review")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "group,keep,path,distance,status" and len(lines) == 1 + 5


def test_cli_moves_only_with_yes_and_undo_puts_files_back(tmp_path):
    store = make_store(tmp_path, planted())
    before, dest = snapshot(store.root), tmp_path / "dups"
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--move-to", dest)
    assert res.exit_code == 0 and "dry run: would move 4" in res.stdout and snapshot(store.root) == before
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--move-to", dest, "--yes")
    assert res.exit_code == 0 and "moved 4 duplicate(s)" in res.stdout and len(snapshot(store.root)) == 31
    res = run("undo", res.stdout.split("siamsearch undo ")[1].strip())
    assert res.exit_code == 0 and "restored 4 file(s), skipped 0" in res.stdout and snapshot(store.root) == before


def test_cli_margin_comes_from_the_calibration_or_is_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32))
    calibrated, bare = tmp_path / "calibrated.pt", tmp_path / "bare.pt"
    fingerprint = save_model(calibrated, model, calibration={"threshold_best_f1": 0.1, "threshold_at_precision": 0.05,
                                                             "threshold_at_recall": 0.08})
    save_model(bare, model)
    res = run("dedup", "--index", make_store(tmp_path / "a", planted(), fingerprint, calibrated).path, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["margin"] == 0.08
    for store in (make_store(tmp_path / "b", planted(), fingerprint, bare),
                  make_store(tmp_path / "c", planted(), fingerprint, None),
                  make_store(tmp_path / "d", planted(), fingerprint, tmp_path / "missing.pt")):
        res = run("dedup", "--index", store.path)
        assert res.exit_code == 2 and "pass --margin" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    other = make_store(tmp_path / "e", planted(), "0" * 16)
    res = run("dedup", "--index", other.path, "--against", tmp_path / "a" / "index", "--margin", 0.1)
    assert res.exit_code == 3 and "different models" in res.stderr


def test_exact_copies_collapse_yet_every_pair_matches_brute_force(tmp_path):
    base = planted()
    x = np.concatenate([base, base[:3], base[:3], base[5:6]])  # vectors 0-2 three times, 5 twice
    store = make_store(tmp_path, x)
    dist = pairwise(x)
    i, j, d = find_pairs(store, 0.2)
    names = {r.id: index_of(r.path) for r in store.iter_rows()}
    found = {(min(names[a], names[b]), max(names[a], names[b])): dd for a, b, dd in zip(i, j, d)}
    truth = {(a, b) for a, b in zip(*np.nonzero(np.triu(dist <= 0.2, 1)))}
    assert set(found) == truth and all(abs(found[p] - dist[p]) < 1e-5 for p in truth)
    groups = {frozenset([g.keep.path, *(m.path for m in g.members)]) for g in find_duplicates(store, 0.2).groups}
    assert frozenset({"d0/v0000.png", "d0/v0030.png", "d2/v0035.png", "d2/v0038.png"}) in groups  # 0, near, copies
    assert frozenset({"d2/v0005.png", "d2/v0041.png"}) in groups


@pytest.mark.parametrize("block", [3, 7, 64])
def test_copies_across_blocks_are_read_at_most_twice_and_pairs_match_brute_force(tmp_path, monkeypatch, block):
    base = planted()
    x = np.concatenate([base, base[:3], base[:3], base[5:6], base[30:31]])  # copies in later blocks than their first
    x[[1, 36]] = x[[36, 1]]  # ... and vector 1's first copy ahead of it, in an earlier block
    store = make_store(tmp_path, x)
    reads, real = [], Store.vectors
    monkeypatch.setattr(Store, "vectors", lambda self, ids=None: reads.extend(np.ravel(ids)) or real(self, ids))
    i, j, d = find_pairs(store, 0.2, block=block)
    copies = 8  # read once more each, beside its representative, to compare their bytes
    assert np.bincount(reads).max() <= 3 and len(reads) < 2 * len(x) + 2 * copies  # once per block, a few early
    names = {r.id: index_of(r.path) for r in store.iter_rows()}
    found = {(min(names[a], names[b]), max(names[a], names[b])): dd for a, b, dd in zip(i, j, d)}
    dist = pairwise(x)
    assert set(found) == {(a, b) for a, b in zip(*np.nonzero(np.triu(dist <= 0.2, 1)))}
    assert all(abs(found[p] - dist[p]) < 1e-5 for p in found)
    monkeypatch.undo()
    assert all(np.array_equal(a, b) for a, b in zip(find_pairs(store, 0.2), (i, j, d)))  # the same in any block size


def test_a_crowd_within_the_margin_keeps_each_images_nearest_and_says_so(tmp_path, monkeypatch):
    from siamsearch.duplicates import closepairs

    monkeypatch.setattr(closepairs, "MAX_NEIGHBOURS", 20)
    rng = np.random.default_rng(0)
    crowd = unit(np.array([1.0] + [0.0] * 15) + 1e-3 * rng.standard_normal((200, 16)))  # near-identical frames
    result = find_duplicates(make_store(tmp_path, crowd), 0.1)
    assert result.capped == 200 and len(result.groups) == 1 and len(result.groups[0].members) == 199


def test_fifty_thousand_identical_vectors_dedup_in_bounded_memory(tmp_path):
    code = """
import resource, sys
from pathlib import Path
import numpy as np
from siamsearch.duplicates.dedup import find_duplicates
from siamsearch.index.rows import NewRow
from siamsearch.index.store import Store
root = Path(sys.argv[1])
store = Store.create(root / "index", dim=16, fingerprint="f" * 16, encoder={}, model_path=None, root=root)
vectors = np.zeros((50_000, 16), np.float32)
vectors[:, 0] = 1
with store.writing():
    store.add([NewRow(f"frame{i:05d}.png", None, 1, 1, 1, 1) for i in range(len(vectors))], vectors)
result = find_duplicates(store, 0.1)
print(len(result.groups), len(result.groups[0].members), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    groups, members, peak_kib = map(int, out.stdout.split())
    assert (groups, members) == (1, 49_999) and peak_kib < 2 * 1024 * 1024, out.stderr


def test_progress_rises_block_by_block_to_the_total_and_the_cli_draws_no_bar_off_a_tty(tmp_path):
    store = make_store(tmp_path, clustered(300))
    calls = []
    find_duplicates(store, 0.1, block=32, progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert len(calls) > 3 and done == sorted(set(done)) and calls[-1] == (300, 300)
    assert {t for _, t in calls} == {300}
    res = run("dedup", "--index", store.path, "--margin", 0.1)
    assert res.exit_code == 0 and res.stderr == ""  # no bar, not even a cleared one


def test_html_limit_shows_the_biggest_groups_first(tmp_path):
    base = planted()
    x = np.concatenate([base, base[7:8], base[7:8], base[7:8]])  # vector 7 four times: the biggest group
    store = make_store(tmp_path, x)
    page = tmp_path / "dups.html"
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--html", page, "--limit", 1)
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "the first 1 groups shown" in text and "group 1: keep d0/v0036.png, 3 duplicate(s)" in text  # 7, 35-37


def test_table_csv_json_and_html_number_the_groups_alike_biggest_first(tmp_path):
    import csv
    import re

    base = planted()
    x = np.concatenate([base, base[7:8], base[7:8], base[7:8]])  # vector 7 four times: the biggest group, not first
    store = make_store(tmp_path, x)
    page, table = tmp_path / "dups.html", tmp_path / "dups.csv"
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--html", page, "--csv", table,
              "--json")
    assert res.exit_code == 0, res.output
    keeps = [g["keep"] for g in json.loads(res.stdout)["groups"]]
    sizes = [len(g["members"]) for g in json.loads(res.stdout)["groups"]]
    assert keeps[0] == "d0/v0036.png" and sizes == sorted(sizes, reverse=True) and len(keeps) > 1
    with open(table) as f:
        by_number = {int(r["group"]): r["keep"] for r in csv.DictReader(f) if r["group"]}
    assert [by_number[n] for n in sorted(by_number)] == keeps
    assert re.findall(r"group \d+: keep (\S+),", page.read_text()) == keeps
    shown = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first").stdout
    assert [shown.index(k) for k in keeps] == sorted(shown.index(k) for k in keeps)


def test_a_key_collision_never_makes_two_different_vectors_copies(tmp_path, monkeypatch):
    x = planted()
    store = make_store(tmp_path, x)
    monkeypatch.setattr(closepairs, "_keys", lambda v: np.zeros((len(v), 2), np.uint64))  # every key collides
    found = closepairs.close_pairs(store, 0.2)
    assert not found.copies  # no vector shares its bytes with another: none may be grouped as a copy
    i, j, d = found.pairs
    dist = pairwise(x)
    names = {r.id: index_of(r.path) for r in store.iter_rows()}
    assert all(abs(dist[names[a], names[b]] - dd) < 1e-5 for a, b, dd in zip(i, j, d))  # no pair at a false 0.0


def test_multi_frame_files_with_one_first_frame_are_for_review_and_never_move(tmp_path, new_store, sync_vectors):
    root = tmp_path / "v"
    root.mkdir()
    pages = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    pages[0].save(root / "v0000.gif", save_all=True, append_images=pages[1:])  # two scans with one cover page
    pages[0].save(root / "v0001.gif", save_all=True, append_images=pages[:0:-1])
    pages[0].save(root / "v0002.png")  # two single-frame copies: a plain near duplicate
    pages[0].save(root / "v0003.png", compress_level=1)
    x = clustered(4)
    x[1], x[3] = x[0], x[2]  # each pair meets at distance 0, as first frames do
    store = new_store(root)
    sync_vectors(store, x)
    assert [r.frames for r in store.iter_rows()] == [3, 3, 1, 1]
    result = find_duplicates(store, 0.1)
    status = {m.path: m.status for g in result.groups for m in g.members}
    assert sorted(status.values()) == ["duplicate", "review"] and status.get("v0001.gif", status.get("v0000.gif")) == "review"
    assert [m.path for m in plan_moves(result, tmp_path / "dups").moves] == [next(p for p in status if p.endswith(".png"))]


def test_a_multi_frame_file_an_older_index_knows_nothing_of_is_checked_before_it_moves(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    pages = [Image.new("RGB", (8, 8), c) for c in ("red", "green")]
    pages[0].save(root / "a.gif", save_all=True, append_images=pages[1:])
    pages[1].save(root / "b.gif", save_all=True, append_images=pages[:1])
    a, b = (Row(0, p.name, p, None, p.stat().st_size, p.stat().st_mtime_ns, 8, 8) for p in sorted(root.iterdir()))
    result = DedupResult(root, 0.1, 0.1, False, [Group(a, 0.0, [Member(b, 0.0, "duplicate")])], 1)
    plan = plan_moves(result, tmp_path / "dups")
    assert not plan.moves and "multi-frame" in plan.skipped[0].reason


def star(step: float, arms: int) -> np.ndarray:
    """Unit vectors: the first at e0, then one at angle step from it towards each of +e1, -e1, +e2, -e2, ... in
    turn (2 sin(step/2) from the first; arms towards other axes sqrt(2) sin(step) from each other)."""
    x = np.zeros((arms + 1, clustered(1).shape[1]), np.float32)
    x[:, 0] = [1.0] + [np.cos(step)] * arms
    for n in range(arms):
        x[n + 1, 1 + n // 2] = np.sin(step) * (1 if n % 2 == 0 else -1)
    return x


def test_a_hub_group_moves_each_file_within_the_margin_of_its_kept_file_and_the_plan_says_it_spans_more(
        tmp_path, new_store, sync_vectors, vector_folder):
    store = new_store(vector_folder(tmp_path / "v", 5))
    sync_vectors(store, star(2 * np.arcsin(0.28 / 2), 4))  # 0.28 from the kept file, 0.39 or more from each other
    run = dedup_index(store.path, margin=0.3, keep="first", move_to=tmp_path / "dups")
    assert len(run.plan.moves) == 4 and all(m.keep == "v0000.png" for m in run.plan.moves)
    assert [k for k, _ in run.plan.wide] == ["v0000.png"] and run.plan.wide[0][1] > 0.39
    assert run.to_dict()["moves"]["wide_groups"][0]["keep"] == "v0000.png"


def test_a_file_kept_for_an_earlier_move_is_not_moved_for_one_beyond_the_margin_of_what_it_stood_for(
        tmp_path, new_store, sync_vectors, vector_folder):
    angle = 2 * np.arcsin(0.25 / 2)
    x = np.zeros((3, clustered(1).shape[1]), np.float32)
    x[:, 0], x[:, 1] = np.cos([0, angle, 2 * angle]), np.sin([0, angle, 2 * angle])  # A - 0.25 - B - 0.25 - C
    root = vector_folder(tmp_path / "v", 3)
    aside = (root / "v0000.png").rename(tmp_path / "v0000.png")  # A arrives after the first run
    store = new_store(root)
    sync_vectors(store, x)
    first = dedup_index(store.path, margin=0.3, keep="first", move_to=tmp_path / "dups", yes=True)
    assert first.moved.done == ["v0002.png"]  # C, kept B
    aside.rename(root / "v0000.png")
    sync_vectors(store, x, prune=True)
    second = dedup_index(store.path, margin=0.3, keep="first", move_to=tmp_path / "dups", yes=True)
    assert second.moved.done == [] and (root / "v0001.png").is_file()  # B stays: A is 0.48 from C
    assert "v0002.png" in second.moved.skipped[0].reason and "beyond the margin" in second.moved.skipped[0].reason
