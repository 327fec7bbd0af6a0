"""ANN index kinds: FAISS answers match brute force; tuning, ids and reading back work for every kind."""

import faiss
import numpy as np
import pytest

from conftest import DIM, assert_same_neighbours, brute_force, clustered

from siamsearch.index.ann import build_index, index_ids, kind_of, plan_kind, reconstruct, set_search_setting, tune_index

@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_kinds_with_generous_settings_match_brute_force(kind):
    xb, xq = clustered(600), clustered(20, seed=1)
    ids = np.arange(600, dtype=np.int64) * 7 + 3
    index, _ = build_index(kind, ids, xb)
    if kind != "flat":
        set_search_setting(index, 1024 if kind == "hnsw" else index.nlist)
    squared, found = index.search(xq, 10)
    assert_same_neighbours(np.sqrt(np.maximum(squared, 0)), found, xb, ids, xq, 10)


def test_plan_kind_by_size_and_trainability():
    assert plan_kind("auto", 10) == "flat" and plan_kind("auto", 300_000) == "ivf"
    assert plan_kind("ivf", 10) == "flat" and plan_kind("hnsw", 10) == "hnsw" and plan_kind("flat", 10**7) == "flat"


def test_ivfpq_holds_ids_removes_and_tunes_to_its_plateau():
    xb = clustered(10_000)
    ids = np.arange(10_000, dtype=np.int64) + 5
    index, tuning = build_index("ivfpq", ids, xb)
    assert np.array_equal(index_ids(index), ids) and tuning["setting"] == "nprobe" and tuning["n"] == 10_000
    index.remove_ids(ids[:10])
    assert np.array_equal(index_ids(index), ids[10:])
    capped = tune_index(index, ids[10:], xb[10:], clustered(50, seed=1), target=1.1)  # PQ cannot reach it
    assert capped["recall"] > 0.5 and capped["value"] < index.nlist  # stopped where recall stopped rising


def test_reading_back_refuses_what_no_kind_holds():
    ids = np.array([3, 10, 17], np.int64)
    index, _ = build_index("flat", ids, clustered(3))
    np.testing.assert_array_equal(reconstruct(index, ids[::-1]), clustered(3)[::-1])
    with pytest.raises(KeyError):
        reconstruct(index, np.array([4], np.int64))
    with pytest.raises(ValueError, match="unexpected FAISS index type IndexLSH"):
        kind_of(faiss.IndexLSH(DIM, 16))
