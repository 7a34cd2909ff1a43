"""Shared test settings: offline Flower, small torch thread counts."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


import pytest  # noqa: E402 - after the environment settings above


@pytest.fixture
def mnist200():
    """The first 200 mnist5k training images, their labels and the dataset's input transform."""
    import torch

    from flnorm.data import load_dataset
    from flnorm.training import Standardize

    data = load_dataset("mnist5k")
    return data.train_x[:200], data.train_y[:200], Standardize(data.mean, data.std, torch.device("cpu"))


@pytest.fixture(scope="module")
def shared_ray():
    """One Ray, and one set of actors, for a module's simulations (as a grid's cells share them)."""
    from flnorm.runner.ray_backend import keep_ray

    with keep_ray():
        yield
