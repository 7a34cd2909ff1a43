"""Partitions: class counts, test split mirrors train, purity, errors."""

import numpy as np
import pytest

from flnorm.data import load_dataset
from flnorm.data.partition import PartitionSpec, make_partition
from flnorm.errors import ConfigError


@pytest.fixture(scope="module")
def labels():
    data = load_dataset("mnist5k")
    return data.train_y.numpy(), data.test_y.numpy()


def _classes(labels, idx):
    return set(np.unique(labels[idx]).tolist())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_classes_k_gives_k_classes_and_mirrors_test(labels, k):
    train_y, test_y = labels
    part = make_partition(train_y, test_y, PartitionSpec.parse(f"classes-{k}"), 10, seed=3)
    all_train = np.concatenate(part.train)
    assert len(all_train) == len(set(all_train.tolist())) == len(train_y)  # disjoint, complete
    for tr, te in zip(part.train, part.test):
        assert len(_classes(train_y, tr)) == k
        assert _classes(test_y, te) == _classes(train_y, tr)
    assert set(np.concatenate(part.test).tolist()) == set(range(len(test_y)))


def test_classes_1_puts_one_class_per_client(labels):
    train_y, test_y = labels
    part = make_partition(train_y, test_y, PartitionSpec.parse("classes-1"), 10, seed=0)
    assert sorted(next(iter(_classes(train_y, p))) for p in part.train) == list(range(10))


def test_test_split_is_proportional_to_train_counts(labels):
    train_y, test_y = labels
    part = make_partition(train_y, test_y, PartitionSpec.parse("dirichlet-0.3"), 10, seed=1)
    for c in range(10):
        train_counts = np.array([(train_y[p] == c).sum() for p in part.train])
        test_counts = np.array([(test_y[p] == c).sum() for p in part.test])
        expected = train_counts / train_counts.sum() * (test_y == c).sum()
        assert np.all(np.abs(test_counts - expected) < 1.0)


def test_iid_is_balanced_and_shuffled(labels):
    train_y, test_y = labels
    part = make_partition(train_y, test_y, PartitionSpec.parse("iid"), 8, seed=0)
    assert [len(p) for p in part.train] == [500] * 8
    for p in part.train:
        assert len(_classes(train_y, p)) == 10


def test_dirichlet_small_alpha_is_skewed(labels):
    train_y, test_y = labels
    part = make_partition(train_y, test_y, PartitionSpec.parse("dirichlet-0.1"), 10, seed=0)
    top_share = [np.bincount(train_y[p], minlength=10).max() / len(p) for p in part.train]
    assert np.mean(top_share) > 0.5


def test_partition_is_pure_function_of_inputs(labels):
    train_y, test_y = labels
    spec = PartitionSpec.parse("dirichlet-0.5")
    a = make_partition(train_y, test_y, spec, 10, seed=7)
    b = make_partition(train_y, test_y, spec, 10, seed=7)
    c = make_partition(train_y, test_y, spec, 10, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.train + a.test, b.train + b.test))
    assert not all(np.array_equal(x, y) for x, y in zip(a.train, c.train))


@pytest.mark.parametrize(
    "text, match",
    [("classes-0", "at least 1 class"), ("dirichlet-0", "must be > 0"), ("shards", "valid forms"),
     ("classes-x", "valid forms")],
)
def test_bad_partition_names(text, match):
    with pytest.raises(ConfigError, match=match):
        PartitionSpec.parse(text)


def test_too_many_clients(labels):
    train_y, test_y = labels
    with pytest.raises(ConfigError, match="only 4000 training samples"):
        make_partition(train_y, test_y, PartitionSpec.parse("iid"), 5000, seed=0)
    with pytest.raises(ConfigError, match="fewer than 2 samples"):
        make_partition(train_y, test_y, PartitionSpec.parse("iid"), 3000, seed=0)
    with pytest.raises(ConfigError, match="only 10 classes"):
        make_partition(train_y, test_y, PartitionSpec.parse("classes-11"), 10, seed=0)
