"""Every strategy in a real Ray simulation with a BatchNorm CNN, messages inspected."""

import numpy as np
import pandas as pd
import pytest
import torch

from bn_reference import layerwise_population_stats
from flnorm import ExperimentConfig, run_experiment
from flnorm.bn import bn_modules
from flnorm.config import STRATEGIES
from flnorm.data import load_dataset, load_partition
from flnorm.runner.monitor import ReplyLog
from flnorm.task import bn_layout, new_model

pytestmark = pytest.mark.slow


@pytest.fixture
def messages(monkeypatch):
    """Every (sent, replies) pair the ServerApp exchanged, captured on the real Grid."""
    log = []
    original = ReplyLog.send_and_receive

    def capture(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(original(self, messages, timeout=timeout))
        log.append((messages, replies))
        return replies

    monkeypatch.setattr(ReplyLog, "send_and_receive", capture)
    return log


def _keys(record_dict):
    return {k for rec in record_dict.array_records.values() for k in rec}


def _run(tmp_path, strategy, **changes):
    settings = {"partition": "classes-1", "clients": 2, "rounds": 2, "local_steps": 2, **changes}
    cfg = ExperimentConfig(norm="bn", strategy=strategy, out=str(tmp_path / strategy), **settings)
    return cfg, run_experiment(cfg)


# num_batches_tracked after 2 rounds x 2 steps on 2 clients: averaged (c + K per round),
# summed (pooled statistics summarize every client's batches), frozen in fixbn's second
# round, never updated on the server where BN statistics stay local.
COUNTS = {"fedavg": 4, "fedprox": 4, "precisebn": 4, "fedavg-pooled": 8, "fedadam": 8, "fedyogi": 8,
          "fixbn": 4, "fedbn": 0, "silobn": 0}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_with_bn_and_keeps_counters_integer(tmp_path, strategy, messages):
    cfg, metrics = _run(tmp_path, strategy)
    assert list(metrics["round"]) == [1, 2]
    assert metrics[["test_accuracy", "personal_accuracy", "union_accuracy"]].notna().all().all()
    assert set(metrics["bn_eval"]) == {cfg.bn_eval_mode}
    state = torch.load(tmp_path / strategy / "model.pt")
    layout = bn_layout(cfg)
    for layer in layout.layers:
        assert state[layer.count_key].dtype == torch.int64
        assert int(state[layer.count_key]) == COUNTS[strategy]
        assert torch.isfinite(state[layer.var_key]).all() and (state[layer.var_key] >= 0).all()
    for sent, replies in messages:
        for r in replies:
            assert not r.has_error(), r.error.reason
            for rec in r.content.array_records.values():
                for k, a in rec.items():
                    if k.endswith("num_batches_tracked"):
                        assert a.numpy().dtype == np.int64


def test_fedbn_bn_tensors_never_leave_the_client(tmp_path, messages):
    cfg, _ = _run(tmp_path, "fedbn")
    bn = bn_layout(cfg).module_keys
    assert bn and messages
    for sent, replies in messages:
        for m in sent:
            assert not (_keys(m.content) & bn)
        for r in replies:
            assert not (_keys(r.content) & bn)
    assert any(_keys(m.content) for sent, _ in messages for m in sent)  # weights did travel


def test_silobn_shares_affine_but_not_statistics(tmp_path, messages):
    cfg, _ = _run(tmp_path, "silobn")
    layout = bn_layout(cfg)
    for sent, replies in messages:
        for content in [m.content for m in sent] + [r.content for r in replies]:
            keys = _keys(content)
            assert not (keys & layout.stat_keys)
            if keys:
                assert {k for layer in layout.layers for k in layer.affine_keys} <= keys


def test_fixbn_freezes_statistics_after_its_rounds(tmp_path, messages):
    cfg, _ = _run(tmp_path, "fixbn", rounds=3, fixbn_rounds=1)
    stats = bn_layout(cfg).stat_keys
    train_sent = [sent for sent, _ in messages if sent and sent[0].metadata.message_type == "train"]
    flags = [bool(s[0].content["config"]["bn-frozen"]) for s in train_sent]
    assert flags == [False, True, True]
    round2, round3 = (s[0].content["arrays"] for s in train_sent[1:])
    for k in stats:
        np.testing.assert_array_equal(round2[k].numpy(), round3[k].numpy())
    final = torch.load(tmp_path / "fixbn" / "model.pt")
    for k in stats:
        np.testing.assert_array_equal(final[k].numpy(), round3[k].numpy())


def test_precisebn_installs_population_statistics_of_the_union(tmp_path):
    cfg, _ = _run(tmp_path, "precisebn", partition="dirichlet-0.5", clients=3, rounds=1)
    state = torch.load(tmp_path / "precisebn" / "model.pt")
    data = load_dataset(cfg.dataset)
    part = load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    union = data.train_x[torch.from_numpy(np.concatenate(part.train))]
    x = (union.float() / 255 - data.mean[0]) / data.std[0]
    model = new_model(cfg)
    model.load_state_dict(state)
    trained = {name: (bn.running_mean.double(), bn.running_var.double()) for name, bn in bn_modules(model).items()}
    reference = layerwise_population_stats(model, x)  # centralized, whole union
    for name, (mean, var) in reference.items():
        torch.testing.assert_close(trained[name][0], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(trained[name][1], var, rtol=1e-5, atol=1e-6)
