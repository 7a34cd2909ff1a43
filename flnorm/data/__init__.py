"""Datasets, partitions and per-client splits."""

from flnorm.data.datasets import DATASETS, ImageDataset, load_dataset
from flnorm.data.federated import ClientData, client_data, load_partition
from flnorm.data.partition import Partition, PartitionSpec, make_partition

__all__ = [
    "DATASETS", "ClientData", "ImageDataset", "Partition", "PartitionSpec",
    "client_data", "load_dataset", "load_partition", "make_partition",
]
