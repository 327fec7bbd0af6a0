"""A person's decisions about duplicates, remembered by the index and applied to every later dedup."""

import json

import numpy as np
import pytest
from conftest import clustered
from conftest import run_cli as run

from siamsearch.commands import decide, dedup_index, forget_decisions
from siamsearch.duplicates import decisions
from siamsearch.duplicates.decisions import DecisionError
from siamsearch.core.errors import NotFoundError


def pairs_of(run_) -> set[frozenset[str]]:
    """Each (kept file, member) of a dedup run, with its status."""
    return {(g.keep.path, m.path, m.status) for g in run_.result.groups for m in g.members}


@pytest.fixture
def decided(tmp_path, new_store, vector_folder, sync_vectors):
    """An index of 6 files: v0000~v0001 (0.05 apart), v0002~v0003 (0.05), v0004 0.25 from v0002 (review at 0.1)."""
    x = clustered(6, seed=3)
    x[1] = x[0] + 0.035 * np.eye(len(x[0]))[1]
    x[3] = x[2] + 0.035 * np.eye(len(x[0]))[1]
    x[4] = x[2] + 0.25 * np.eye(len(x[0]))[2]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    root = vector_folder(tmp_path / "v", 6)
    store = new_store(root)
    sync_vectors(store, x)
    return store, x


def test_not_duplicates_is_never_shown_again_even_after_a_rename_and_ignore_decisions_shows_it(decided, sync_vectors):
    store, x = decided
    before = dedup_index(store.path, margin=0.1, review_margin=0.3, keep="first")
    assert ("v0000.png", "v0001.png", "duplicate") in pairs_of(before)
    assert decide(store.path, "not-duplicates", ["v0000.png", store.root / "v0001.png"]) == 1
    after = dedup_index(store.path, margin=0.1, review_margin=0.3, keep="first")
    assert not any({"v0000.png", "v0001.png"} & {k, m} for k, m, _ in pairs_of(after)) and after.decisions_applied == 1
    assert pairs_of(dedup_index(store.path, margin=0.1, review_margin=0.3, keep="first", ignore_decisions=True)) == \
        pairs_of(before)
    (store.root / "renamed").mkdir()
    (store.root / "v0001.png").rename(store.root / "renamed" / "v0001.png")  # same content, another path
    sync_vectors(store, x, prune=True)
    again = dedup_index(store.path, margin=0.1, review_margin=0.3, keep="first")
    assert not any("renamed/v0001.png" in (k, m) for k, m, _ in pairs_of(again))
    assert decisions.listed(store.path)[0].a_path in ("v0000.png", "v0001.png")


def test_keep_this_wins_over_the_policy_and_the_move_plan_keeps_it(decided, tmp_path):
    store, _ = decided
    decide(store.path, "keep", ["v0001.png"])
    run_ = dedup_index(store.path, margin=0.1, keep="first", move_to=tmp_path / "dups")
    assert ("v0001.png", "v0000.png", "duplicate") in pairs_of(run_)
    assert "v0001.png" not in [m.path for m in run_.plan.moves] and "v0000.png" in [m.path for m in run_.plan.moves]


def test_a_confirmed_member_of_the_review_band_moves_with_the_duplicates(decided, tmp_path):
    store, _ = decided
    assert ("v0002.png", "v0004.png", "review") in pairs_of(dedup_index(store.path, margin=0.1, review_margin=0.3,
                                                                         keep="first"))
    decide(store.path, "duplicate", ["v0004.png"])
    run_ = dedup_index(store.path, margin=0.1, review_margin=0.3, keep="first", move_to=tmp_path / "d", yes=True)
    assert ("v0002.png", "v0004.png", "duplicate") in pairs_of(run_) and "v0004.png" in run_.moved.done


def test_decisions_survive_a_rebuild_and_are_listed_and_forgotten_from_the_cli(decided, sync_vectors):
    store, x = decided
    res = run("decisions", "--index", store.path, "--not-duplicates", "v0002.png", "--not-duplicates", "v0003.png",
              "--keep", "v0000.png", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(d["kind"] for d in json.loads(res.stdout)) == ["keep", "not-duplicates"]
    sync_vectors(store, x, rebuild=True)  # a new rows.sqlite: the decisions file stays
    res = run("dedup", "--index", store.path, "--margin", 0.1, "--keep", "first", "--json")
    groups = json.loads(res.stdout)["groups"]
    assert [g["keep"] for g in groups] == ["v0000.png"] and json.loads(res.stdout)["decisions_applied"] == 2
    res = run("decisions", "--index", store.path, "--forget", "v0002.png", "--json")
    assert [d["kind"] for d in json.loads(res.stdout)] == ["keep"]
    assert forget_decisions(store.path) == 1 and decisions.listed(store.path) == []


def test_a_file_the_index_does_not_hold_or_too_few_files_are_one_line(decided):
    store, _ = decided
    with pytest.raises(NotFoundError, match="not in the index"):
        decide(store.path, "keep", ["nope.png"])
    with pytest.raises(DecisionError, match="two or more"):
        decide(store.path, "not-duplicates", ["v0000.png"])
    res = run("decisions", "--index", store.path, "--not-duplicates", "v0000.png")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
