"""Feature shift end to end: real simulations on the multi-domain digits, per-domain metrics
checked against the saved model evaluated here in plain PyTorch."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from flnorm import ExperimentConfig, run_experiment
from flnorm.data import load_dataset
from flnorm.data.partition import PartitionSpec, make_partition
from flnorm.models import build_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

DOMAINS = ("mnist", "optdigits", "mnistm", "synth")


def _accuracy(model, x, y, mean, std):
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    inputs = x.float() * (1 / (255 * std)) - mean / std  # (x / 255 - mean) / std, rounded as the runner does
    with torch.no_grad():
        return float((model.eval()(inputs).argmax(1) == y).double().mean())


def test_fedwon_on_domains_reports_every_domain(tmp_path):
    """``--norm ws`` (FedWon) under one domain per client: the per-domain columns of
    metrics.csv are the saved global model's accuracy on each client's and each domain's
    test images, recomputed from the partition indices."""
    cfg = ExperimentConfig(dataset="digits", partition="domains", norm="ws", clients=4, rounds=2,
                           local_steps=4, lr=0.05, out=str(tmp_path / "ws"))
    run_experiment(cfg)
    out = tmp_path / "ws"
    metrics = pd.read_csv(out / "metrics.csv")
    clients = pd.read_csv(out / "clients.csv")
    assert list(clients[clients["round"] == 2]["domain"]) == list(DOMAINS)
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["agc_clip"] == pytest.approx(1.28)

    data = load_dataset("digits", cfg.data_dir)
    model = build_model("cnn", cfg.norm_spec, 10, (3, 32, 32))
    model.load_state_dict(torch.load(out / "model.pt"))
    assert not list(model.buffers())  # FedWon: no state anywhere
    part = make_partition(data.train_y.numpy(), data.test_y.numpy(), PartitionSpec.parse("domains"), 4, 0,
                          data.train_domain.numpy(), data.test_domain.numpy())
    last = metrics.iloc[-1]
    for client, name in enumerate(DOMAINS):
        idx = torch.from_numpy(part.test[client])
        acc = _accuracy(model, data.test_x[idx], data.test_y[idx], data.mean, data.std)
        assert last[f"test_accuracy_{name}"] == pytest.approx(acc, abs=1e-9), name
        # no client state: the personalized model is the global one
        assert last[f"personal_accuracy_{name}"] == pytest.approx(acc, abs=1e-9), name
        every = data.test_domain == client
        union = _accuracy(model, data.test_x[every], data.test_y[every], data.mean, data.std)
        assert last[f"union_accuracy_{name}"] == pytest.approx(union, abs=1e-9), name
    assert last["test_accuracy"] == pytest.approx(np.mean([last[f"test_accuracy_{d}"] for d in DOMAINS]))


def test_fedbn_on_domains_with_two_clients_per_domain(tmp_path):
    """FedBN, 8 clients over 4 domains: each domain's figure averages its two clients' own."""
    cfg = ExperimentConfig(dataset="digits", partition="domains", norm="bn", strategy="fedbn", clients=8,
                           rounds=2, local_steps=3, out=str(tmp_path / "bn"))
    run_experiment(cfg)
    metrics = pd.read_csv(tmp_path / "bn" / "metrics.csv")
    clients = pd.read_csv(tmp_path / "bn" / "clients.csv")
    last = clients[clients["round"] == 2]
    assert list(last["domain"]) == list(DOMAINS) * 2
    for name in DOMAINS:
        mine = last[last["domain"] == name]
        assert len(mine) == 2
        for column in ("test_accuracy", "personal_accuracy"):
            assert metrics.iloc[-1][f"{column}_{name}"] == pytest.approx(mine[column].mean()), (name, column)
