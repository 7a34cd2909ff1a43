"""Splitting a dataset across clients.

Schemes (``--partition``):

- ``iid``: a uniform random split (flwr-datasets ``IidPartitioner`` on shuffled data);
- ``classes-K``: every client holds exactly K classes (``PathologicalPartitioner``,
  first class of client i is ``i mod C``, the rest random);
- ``dirichlet-B``: class proportions per client drawn from Dir(B) (``DirichletPartitioner``);
- ``domains`` (feature shift, multi-domain datasets only): client ``i`` holds data of domain
  ``i mod D`` alone, so clients spread evenly over the ``D`` domains; the clients of one
  domain split it IID, or by a label scheme after a ``+``: ``domains+classes-2``,
  ``domains+dirichlet-0.5`` (label shift inside domains).

The test set is split *like the train set*, as in the LN/FN paper: the test images of
class c are divided among clients in proportion to how many training images of class c
each client holds (within the client's own domain under ``domains``). A partition is a
pure function of (labels, domains, scheme, clients, seed).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from flnorm.errors import ConfigError

PARTITION_FORMS = ("iid", "classes-K (K >= 1 integer)", "dirichlet-B (B > 0)", "domains[+iid|classes-K|dirichlet-B]")
MIN_CLIENT_SAMPLES = 2  # BatchNorm needs two samples per batch in train mode


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition scheme: ``iid``, ``classes`` with ``k``, or ``dirichlet`` with
    ``alpha``; with ``domains`` that scheme applies inside each domain."""

    scheme: str
    k: int = 0
    alpha: float = 0.0
    domains: bool = False

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        name = text.strip().lower()
        if name == "domains" or name.startswith("domains+"):
            inner = name.partition("+")[2] or "iid"
            if inner.startswith("domains"):
                raise ConfigError(f"partition {text!r}: 'domains' can appear once; valid forms: "
                                  f"{', '.join(PARTITION_FORMS)}")
            try:
                return dataclasses.replace(cls.parse(inner), domains=True)
            except ConfigError as exc:
                raise ConfigError(f"partition {text!r}: {exc}") from None
        if name == "iid":
            return cls("iid")
        if m := re.fullmatch(r"classes-(\d+)", name):
            k = int(m.group(1))
            if k < 1:
                raise ConfigError(f"partition {text!r}: each client needs at least 1 class (classes-K, K >= 1)")
            return cls("classes", k=k)
        if m := re.fullmatch(r"dirichlet-([0-9]*\.?[0-9]+(?:e-?\d+)?)", name):
            alpha = float(m.group(1))
            if alpha <= 0:
                raise ConfigError(f"partition {text!r}: the Dirichlet concentration must be > 0")
            return cls("dirichlet", alpha=alpha)
        raise ConfigError(f"unknown partition {text!r}; valid forms: {', '.join(PARTITION_FORMS)}")

    @property
    def name(self) -> str:
        if self.domains:
            return "domains" if self.scheme == "iid" else f"domains+{self.inner.name}"
        if self.scheme == "classes":
            return f"classes-{self.k}"
        if self.scheme == "dirichlet":
            return f"dirichlet-{self.alpha:g}"
        return "iid"

    @property
    def inner(self) -> PartitionSpec:
        """The label scheme alone (inside each domain under ``domains``)."""
        return dataclasses.replace(self, domains=False)


@dataclass(frozen=True, eq=False)
class Partition:
    """Index arrays into the train and test sets, one per client."""

    train: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]

    @property
    def num_clients(self) -> int:
        return len(self.train)


def _flwr_partitioner(spec: PartitionSpec, num_clients: int, num_samples: int, seed: int):  # noqa: ANN202
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if spec.scheme == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if spec.scheme == "classes":
        return PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=spec.k,
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=seed,
        )
    return DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=spec.alpha,
        min_partition_size=max(MIN_CLIENT_SAMPLES, min(10, num_samples // (2 * num_clients))),
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


def split_train(labels: np.ndarray, spec: PartitionSpec, num_clients: int, seed: int) -> list[np.ndarray]:
    """Indices of ``labels`` held by each client."""
    from datasets import Dataset

    n = len(labels)
    num_classes = len(np.unique(labels))
    if num_clients < 1:
        raise ConfigError(f"clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ConfigError(f"{num_clients} clients but only {n} training samples: use at most {n // MIN_CLIENT_SAMPLES} clients")
    if spec.scheme == "classes" and spec.k > num_classes:
        raise ConfigError(f"partition classes-{spec.k}: the dataset has only {num_classes} classes")
    order = np.random.default_rng(seed).permutation(n)  # IidPartitioner shards contiguously
    table = Dataset.from_dict({"label": labels[order], "idx": order})
    partitioner = _flwr_partitioner(spec, num_clients, n, seed)
    partitioner.dataset = table
    try:
        parts = [np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(num_clients)]
    except ValueError as exc:
        raise ConfigError(f"cannot split {n} samples into {num_clients} clients with {spec.name}: {exc}") from exc
    small = [i for i, p in enumerate(parts) if len(p) < MIN_CLIENT_SAMPLES]
    if small:
        raise ConfigError(
            f"partition {spec.name} of {n} samples over {num_clients} clients leaves client(s) "
            f"{small[:5]} with fewer than {MIN_CLIENT_SAMPLES} samples; use fewer clients"
        )
    return [np.sort(p) for p in parts]


def split_like(
    train_parts: list[np.ndarray], train_labels: np.ndarray, test_labels: np.ndarray, seed: int
) -> list[np.ndarray]:
    """Split the test set so each client's class mix matches its training split.

    The test images of class c go to the clients in proportion to their counts of class c
    in training (largest-remainder rounding). Classes that no client holds are left out.
    """
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    counts = np.stack([np.bincount(train_labels[p], minlength=classes) for p in train_parts])
    rng = np.random.default_rng(seed + 1)
    out: list[list[np.ndarray]] = [[] for _ in train_parts]
    for c in range(classes):
        holders = counts[:, c]
        total = holders.sum()
        pool = rng.permutation(np.flatnonzero(test_labels == c))
        if total == 0 or len(pool) == 0:
            continue
        exact = holders * len(pool) / total
        share = np.floor(exact).astype(np.int64)
        remainder = len(pool) - share.sum()
        share[np.argsort(-(exact - share), kind="stable")[:remainder]] += 1
        for k, piece in enumerate(np.split(pool, np.cumsum(share)[:-1])):
            out[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in out]


def make_partition(
    train_labels: np.ndarray, test_labels: np.ndarray, spec: PartitionSpec, num_clients: int, seed: int,
    train_domains: np.ndarray | None = None, test_domains: np.ndarray | None = None,
) -> Partition:
    """Partition train and test sets across ``num_clients``.

    ``train_domains``/``test_domains`` (each sample's domain index) are needed by ``domains``
    partitions and ignored by the others.
    """
    if not spec.domains:
        train = split_train(train_labels, spec, num_clients, seed)
        return Partition(tuple(train), tuple(split_like(train, train_labels, test_labels, seed)))
    num_domains = 1 if train_domains is None or test_domains is None else int(train_domains.max()) + 1
    check_domains(spec, num_domains, num_clients)
    assert train_domains is not None and test_domains is not None
    train: list[np.ndarray] = [np.empty(0, np.int64)] * num_clients
    test: list[np.ndarray] = [np.empty(0, np.int64)] * num_clients
    owner = client_domains(num_clients, num_domains)
    for d in range(num_domains):
        members = [client for client, domain in enumerate(owner) if domain == d]
        tr, te = np.flatnonzero(train_domains == d), np.flatnonzero(test_domains == d)
        local = split_train(train_labels[tr], spec.inner, len(members), seed + d)
        local_test = split_like(local, train_labels[tr], test_labels[te], seed + d)
        for client, part, part_test in zip(members, local, local_test, strict=True):
            train[client], test[client] = tr[part], te[part_test]
    return Partition(tuple(train), tuple(test))


def check_domains(
    spec: PartitionSpec, num_domains: int, num_clients: int,
    dataset: str = "the dataset", multi_domain: str = "e.g. digits",
) -> None:
    """Refuse a ``domains`` partition its data cannot serve (other partitions pass).

    Parameters
    ----------
    spec, num_domains, num_clients
        The partition, the dataset's number of domains and the number of clients.
    dataset, multi_domain
        Names for the message: the dataset, and the multi-domain datasets to choose from.

    Raises
    ------
    ConfigError
        On a single-domain dataset, or fewer clients than domains (a domain would have no client).
    """
    if not spec.domains:
        return
    if num_domains < 2:
        raise ConfigError(f"partition {spec.name} needs a multi-domain dataset: {multi_domain} "
                          f"({dataset} has one domain)")
    if num_clients < num_domains:
        raise ConfigError(f"partition {spec.name}: {num_clients} clients cannot cover the {num_domains} domains "
                          f"of {dataset}; use clients >= {num_domains}")


def client_domains(num_clients: int, num_domains: int) -> list[int]:
    """The domain of every client under a ``domains`` partition: client ``i`` holds ``i mod D``."""
    return [i % num_domains for i in range(num_clients)]
