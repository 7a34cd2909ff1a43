"""The embedded multi-domain digits set and the ``domains`` partitions (feature shift)."""

import numpy as np
import pytest

from flnorm.config import ExperimentConfig
from flnorm.data import digits
from flnorm.data.datasets import load_dataset
from flnorm.data.partition import PartitionSpec, client_domains, make_partition
from flnorm.errors import ConfigError


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def data(digits_dir):
    return load_dataset("digits", digits_dir)  # built here (the cache is empty), once per module


def test_every_domain_has_ten_classes_in_one_shape(data):
    assert data.domains == ("mnist", "optdigits", "mnistm", "synth")
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert str(data.train_x.dtype) == str(data.test_x.dtype) == "torch.uint8"
    for split_x, split_y, split_d in ((data.train_x, data.train_y, data.train_domain),
                                      (data.test_x, data.test_y, data.test_domain)):
        assert len(split_x) == len(split_y) == len(split_d)
        for d in range(4):
            counts = np.bincount(split_y[split_d == d].numpy(), minlength=10)
            assert counts.min() > 0 and len(counts) == 10
    sizes = {name: (int((data.train_domain == d).sum()), int((data.test_domain == d).sum()))
             for d, name in enumerate(data.domains)}
    assert sizes == {"mnist": (2000, 500), "optdigits": (1438, 359), "mnistm": (2000, 500), "synth": (2000, 500)}


def test_optdigits_is_sklearns_set(data):
    from sklearn.datasets import load_digits

    target = load_digits().target
    mine = np.concatenate([data.train_y[data.train_domain == 1].numpy(), data.test_y[data.test_domain == 1].numpy()])
    assert np.array_equal(np.bincount(mine), np.bincount(target))


def test_grey_domains_replicate_channels_and_colour_domains_do_not(data):
    x, d = data.train_x, data.train_domain
    for domain in (0, 1):
        grey = x[d == domain]
        assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    for domain in (2, 3):
        colour = x[d == domain]
        assert (colour[:, 0] != colour[:, 1]).float().mean() > 0.5


def test_domains_look_different(data):
    """Feature shift: the per-domain mean intensity and contrast differ clearly."""
    stats = [(float(data.train_x[data.train_domain == d].float().mean()),
              float(data.train_x[data.train_domain == d].float().std())) for d in range(4)]
    means = sorted(m for m, _ in stats)
    assert min(b - a for a, b in zip(means, means[1:])) > 5


def test_mnist_and_mnistm_use_disjoint_digits():
    (xa, _), (xb, _) = digits._mnist_halves()
    a = {bytes(img) for img in xa}
    assert len(xa) + len(xb) == 5000 and not any(bytes(img) in a for img in xb)


def test_recipes_are_seeded(monkeypatch):
    monkeypatch.setattr(digits, "SYNTH_PER_CLASS", 3)
    first, second = digits.synth_domain(), digits.synth_domain()
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[0].shape == (30, 3, 32, 32)
    assert np.array_equal(digits.mnistm_domain()[0], digits.mnistm_domain()[0])


def test_the_dataset_is_cached(digits_dir, data):
    from pathlib import Path

    assert list((Path(digits_dir) / ".flnorm-cache").glob("digits-*.npz"))
    stored = digits.load_digits_arrays(Path(digits_dir))  # read back from the file
    assert np.array_equal(stored["train_x"], data.train_x.numpy())
    assert np.array_equal(stored["test_domain"], data.test_domain.numpy())


@pytest.mark.parametrize("partition, clients", [("domains", 4), ("domains", 8), ("domains+classes-2", 8),
                                                ("domains+dirichlet-0.5", 12)])
def test_domains_partition_keeps_each_client_in_its_domain(data, partition, clients):
    train_y, test_y = data.train_y.numpy(), data.test_y.numpy()
    train_d, test_d = data.train_domain.numpy(), data.test_domain.numpy()
    spec = PartitionSpec.parse(partition)
    part = make_partition(train_y, test_y, spec, clients, 0, train_d, test_d)
    owner = client_domains(clients, 4)
    assert owner == [i % 4 for i in range(clients)]
    for client, (tr, te) in enumerate(zip(part.train, part.test, strict=True)):
        assert set(train_d[tr].tolist()) == {owner[client]}
        assert set(test_d[te].tolist()) <= {owner[client]} and len(te) > 0
        assert set(test_y[te].tolist()) <= set(train_y[tr].tolist())
        if spec.scheme == "classes":
            assert len(set(train_y[tr].tolist())) == 2
    every = np.concatenate(part.train)
    assert len(every) == len(set(every.tolist()))
    if spec.scheme == "iid":  # the clients of a domain share all of it, evenly
        assert len(every) == len(train_y)
        for d in range(4):
            sizes = [len(p) for c, p in enumerate(part.train) if owner[c] == d]
            assert max(sizes) - min(sizes) <= 1


def test_domains_partition_parses_and_names():
    assert PartitionSpec.parse("domains").name == "domains"
    assert PartitionSpec.parse("Domains+Classes-2").name == "domains+classes-2"
    assert PartitionSpec.parse("domains+dirichlet-0.50").name == "domains+dirichlet-0.5"
    assert PartitionSpec.parse("domains+iid").name == "domains"
    for bad in ("domains+foo", "domains+domains", "domains+classes-0"):
        with pytest.raises(ConfigError, match="partition"):
            PartitionSpec.parse(bad)


def test_domains_partition_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="needs a multi-domain dataset: digits"):
        ExperimentConfig(dataset="mnist5k", partition="domains")
    with pytest.raises(ConfigError, match="use clients >= 4"):
        ExperimentConfig(dataset="digits", partition="domains", clients=3)
    with pytest.raises(ConfigError, match="multi-domain"):
        make_partition(np.zeros(10, np.int64), np.zeros(4, np.int64), PartitionSpec.parse("domains"), 2, 0)


def test_flnorm_plot_draws_every_domain(tmp_path, digits_dir, data):
    import matplotlib.image as mpimg

    from flnorm.cli import main
    from flnorm.plots import sample_grid

    fig = sample_grid("digits", digits_dir, per_domain=5)
    axes = fig.get_axes()
    assert len(axes) == 4 * 5
    assert [axes[5 * row].get_ylabel() for row in range(4)] == list(data.domains)
    assert main(["plot", "--samples", "digits", "--out", str(tmp_path / "p"), "--data-dir", digits_dir]) == 0
    image = mpimg.imread(tmp_path / "p" / "samples-digits.png")
    assert image.shape[0] > 100 and image.std() > 0.1  # drawn, not blank
    with pytest.raises(SystemExit):
        main(["plot"])
