"""Per-process caches of datasets and partitions, and one client's data on a device.

These caches live in an importable module on purpose: Ray actors keep them across
calls, while globals of a ``__main__`` script would be pickled by value and lost.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from flnorm.data import partition as partition_module
from flnorm.data.cache import cache_key, cached_arrays
from flnorm.data.datasets import ImageDataset, load_dataset
from flnorm.data.partition import Partition, PartitionSpec, make_partition


@lru_cache(maxsize=8)
def load_partition(
    dataset: str, data_dir: str, download: bool, partition: str, clients: int, seed: int
) -> Partition:
    """Partition of ``dataset`` (cached per process and on disk, see ``flnorm.data.cache``).

    The disk key hashes the labels, the partition arguments, ``partition.py``'s source
    and the flwr-datasets version, so a changed partitioner never reads a stale file.
    """
    data = load_dataset(dataset, data_dir, download)
    train_y, test_y = data.train_y.numpy(), data.test_y.numpy()
    train_d, test_d = (None, None) if data.train_domain is None else (data.train_domain.numpy(), data.test_domain.numpy())
    spec = PartitionSpec.parse(partition)
    key = cache_key(
        train_y, test_y, train_d, test_d, spec.name, clients, seed, Path(partition_module.__file__).read_bytes(),
        importlib.metadata.version("flwr-datasets"),
    )

    def build() -> dict[str, np.ndarray]:
        built = make_partition(train_y, test_y, spec, clients, seed, train_d, test_d)
        return {**_packed("train", built.train), **_packed("test", built.test)}

    arrays = cached_arrays(data_dir, f"partition-{dataset}-{spec.name}-c{clients}-s{seed}-{key}", build)
    return Partition(_unpacked("train", arrays), _unpacked("test", arrays))


def _packed(name: str, parts: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return {f"{name}_index": flat.astype(np.int64), f"{name}_sizes": sizes}


def _unpacked(name: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    ends = np.cumsum(arrays[f"{name}_sizes"])
    return tuple(np.split(arrays[f"{name}_index"], ends[:-1]))


@lru_cache(maxsize=4)
def _on_device(dataset: str, data_dir: str, download: bool, device: str) -> ImageDataset:
    data = load_dataset(dataset, data_dir, download)
    if device == "cpu":
        return data
    dev = torch.device(device)
    return dataclasses.replace(
        data, train_x=data.train_x.to(dev), train_y=data.train_y.to(dev), test_x=data.test_x.to(dev),
        test_y=data.test_y.to(dev),
    )


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's train and test split, uint8 images on the training device; for a
    multi-domain dataset, each test image's domain index (``test_domain``)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_domain: torch.Tensor | None = None


def client_data(
    dataset: str, data_dir: str, download: bool, partition: str, clients: int, seed: int,
    client: int, device: torch.device,
) -> ClientData:
    """The split of client ``client`` (``0 <= client < clients``) on ``device``."""
    if not 0 <= client < clients:
        raise ValueError(f"client {client} out of range for {clients} clients")
    parts = load_partition(dataset, data_dir, download, partition, clients, seed)
    data = _on_device(dataset, data_dir, download, str(device))
    tr = torch.from_numpy(parts.train[client]).to(data.train_x.device)
    te = torch.from_numpy(parts.test[client]).to(data.test_x.device)
    domain = None if data.test_domain is None else data.test_domain.to(te.device)[te]
    return ClientData(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te], domain)
