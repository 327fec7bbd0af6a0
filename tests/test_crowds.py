"""Crowds of similar pictures: their members' duplicates must stand out of the crowd; small copy groups keep the margin."""

from __future__ import annotations

import json

import numpy as np

from siamsearch.duplicates.crowds import crowd_margins
from siamsearch.duplicates.dedup import find_duplicates
from test_dedup import make_store, run


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_crowd_margin_is_a_share_of_the_distance_to_the_kth_neighbour_and_inf_below_k():
    i, j = np.array([0, 0, 0, 1]), np.array([1, 2, 3, 2])
    d = np.array([0.1, 0.3, 0.2, 0.4], np.float32)
    margins = crowd_margins((i, j, d), np.array([0, 1, 2, 3]), crowd=3, stand_out=0.5)
    assert margins[0] == np.float32(0.3) * 0.5  # 0 has three neighbours: 0.1, 0.2, 0.3
    assert np.isinf(margins[1:]).all()  # the others have two or one


def test_a_crowd_of_look_alikes_is_for_review_but_a_copy_that_stands_out_of_it_is_a_duplicate(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    crowd = _unit(centre + rng.normal(size=(15, 64)) * 0.2)  # 15 look-alikes, about 0.28 apart
    copy = _unit(crowd[:1] + rng.normal(size=(1, 64)) * 0.005)  # a copy of the first, about 0.04 from it
    photo = _unit(rng.normal(size=(1, 64)))
    edits = _unit(photo + rng.normal(size=(7, 64)) * 0.025)  # a photo and 7 edits far from the crowd: not a crowd
    x = np.concatenate([crowd, copy, photo, edits])
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert 0.2 < np.median(d[:15, :15][np.triu_indices(15, 1)]) < 0.4 and d[:15, :15].max() < 0.5
    store = make_store(tmp_path, x)
    duplicates = lambda result: {frozenset([g.keep.path, m.path]) for g in result.groups  # noqa: E731
                                 for m in g.members if m.status == "duplicate"}
    held = find_duplicates(store, 0.5, keep="first")
    name = lambda i: f"d{i % 3}/v{i:04d}.png"  # noqa: E731 - make_store's file of vector i
    assert frozenset([name(0), name(15)]) in duplicates(held)  # the copy stands out: 0.04 against ~0.28
    assert all(name(i) not in p or p == frozenset([name(0), name(15)]) for i in range(1, 15)
               for p in duplicates(held))  # no look-alike is called a duplicate of another
    edited = {name(i) for i in range(16, 24)}
    assert any(edited == {g.keep.path} | {m.path for m in g.members if m.status == "duplicate"}
               for g in held.groups)  # a photo and its 7 edits: one group of duplicates, no crowd
    assert held.crowded >= 13 and held.to_dict()["crowded"] == held.crowded
    plain = find_duplicates(store, 0.5, keep="first", crowd=0)  # off: the margin alone, the crowd grouped
    assert plain.crowded == 0 and len(duplicates(plain)) > len(duplicates(held)) + 10
    for flag, crowded in (("10", held.crowded), ("0", 0)):  # the CLI's --crowd says the same
        report = json.loads(run("dedup", "--index", store.path, "--margin", 0.5, "--crowd", flag, "--json").stdout)
        assert report["crowded"] == crowded
