"""P×K sampling invariants and identity-level validation splits."""

import numpy as np
import pytest

from siamsearch.training.sampling import PKSampler, encode_labels, split_identities


def test_pk_batches_hold_p_identities_of_k_distinct_images():
    labels = np.repeat(np.arange(10), 6)
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5  # ceil(60 / 12)
    for batch in batches:
        assert len(batch) == 12
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 4 and (counts == 3).all()
        assert len(set(batch)) == 12  # enough images: no repeats


def test_singletons_only_join_as_negatives():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 4])  # 2, 3, 4 have one image each
    for batch in PKSampler(labels, p=2, k=2, seed=0):
        counts = dict(zip(*np.unique(labels[batch], return_counts=True)))
        for lab in (2, 3, 4):
            assert counts.get(lab, 0) <= 1
        assert sum(1 for lab in (0, 1) if counts.get(lab, 0) == 2) == 2


def test_self_supervised_sampling_repeats_each_image_as_its_own_positive():
    labels = np.arange(20)
    for batch in PKSampler(labels, p=5, k=2, min_images=1, seed=0):
        assert len(batch) == 10 and len(set(batch)) == 5


def test_epochs_differ_but_are_reproducible():
    labels = np.repeat(np.arange(10), 4)
    s = PKSampler(labels, p=3, k=2, seed=7)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    s.set_epoch(1)
    assert list(s) == first


def test_too_few_identities_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 identities"):
        PKSampler(np.array([0, 0, 1]), p=2, k=2)


def test_split_holds_out_whole_groups():
    names = [f"alpha{a}/char{c}" for a in range(5) for c in range(4) for _ in range(3)]
    train, val = split_identities(names, val_fraction=0.4, group_depth=1, seed=0)
    train_groups = {names[i].split("/")[0] for i in train}
    val_groups = {names[i].split("/")[0] for i in val}
    assert len(val_groups) == 2 and not train_groups & val_groups
    assert len(train) + len(val) == len(names)


def test_split_by_identity_never_shares_an_identity():
    names = [f"id{i}" for i in range(10) for _ in range(3)]
    train, val = split_identities(names, 0.3, seed=3)
    assert not {names[i] for i in train} & {names[i] for i in val}
    ids, table = encode_labels(names)
    assert table[ids[0]] == "id0" and len(table) == 10


def test_too_few_identities_to_split_hold_nothing_out():
    two = ["a"] * 3 + ["b"] * 3 + ["c"]  # c: one image, a negative only
    for names in (two, two + ["d"] * 2, two + ["d"] * 2 + ["e"] * 2):  # the 20% held out would leave one side with 1
        train, val = split_identities(names, 0.2, seed=0)
        assert len(train) == len(names) and not len(val)
    enough = [f"id{i}" for i in range(10) for _ in range(2)]
    assert len(split_identities(enough, 0.2, seed=0)[1]) == 4
    assert len(split_identities([f"img{i}" for i in range(3)], 0.5, min_images=1)[1]) == 0  # self-supervised
