"""Stratified label subsets and validation splits."""
import numpy as np
import pytest

from evaluation.subset import stratified_split, stratified_subset


def labels_fixture():
    # class sizes 1, 3, 10, 57, 200 in shuffled order
    sizes = [1, 3, 10, 57, 200]
    lab = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(5).permutation(lab), sizes


@pytest.mark.parametrize("fraction,expected", [
    (0.01, [1, 1, 1, 1, 2]),      # floor(f*n + 0.5), at least one per class
    (0.1, [1, 1, 1, 6, 20]),
    (0.5, [1, 2, 5, 29, 100]),
    (1.0, [1, 3, 10, 57, 200]),
])
def test_size_per_class(fraction, expected):
    labels, _ = labels_fixture()
    chosen = stratified_subset(labels, fraction, seed=0)
    counts = np.bincount(labels[chosen], minlength=5)
    assert counts.tolist() == expected
    assert len(np.unique(chosen)) == len(chosen)
    assert np.all(np.diff(chosen) > 0)


def test_reproducible_and_seed_dependent():
    labels, _ = labels_fixture()
    a = stratified_subset(labels, 0.1, seed=3)
    assert np.array_equal(a, stratified_subset(labels, 0.1, seed=3))
    assert not np.array_equal(a, stratified_subset(labels, 0.1, seed=4))


def test_split_partitions_and_keeps_every_class_in_train():
    labels, sizes = labels_fixture()
    train, val = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.intersect1d(train, val).size == 0
    assert np.bincount(labels[val], minlength=5).tolist() == [0, 1, 2, 11, 40]
    assert np.all(np.bincount(labels[train], minlength=5) >= 1)
    train2, val2 = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(val, val2)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(np.array([0, 1, 1]), fraction, seed=0)
