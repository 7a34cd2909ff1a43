"""Real Flower simulations on the Ray backend (slow: each starts Ray)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from flnorm import ExperimentConfig, run_experiment
from flnorm.models import build_model

pytestmark = pytest.mark.slow


def _check_run_dir(run_dir, cfg: ExperimentConfig):
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["round"]) == list(range(1, cfg.rounds + 1))
    for col in ("test_accuracy", "test_loss", "train_loss", "union_accuracy", "seconds"):
        assert metrics[col].notna().all(), col
    assert (metrics["failures"] == 0).all()
    assert (metrics["clients_trained"] == cfg.clients).all()
    clients = pd.read_csv(run_dir / "clients.csv")
    assert len(clients) == cfg.rounds * cfg.clients
    assert sorted(clients["client"].unique()) == list(range(cfg.clients))
    assert (clients["fit_seconds"] > 0).all() and (clients["eval_seconds"] > 0).all()  # the clients' own times
    # the paper's metric is the unweighted mean over clients of the per-client accuracy
    last = clients[clients["round"] == cfg.rounds]
    assert metrics["test_accuracy"].iloc[-1] == pytest.approx(last["test_accuracy"].mean())
    saved = ExperimentConfig.from_flat(json.loads((run_dir / "config.json").read_text())["config"])
    assert saved.replace(data_dir=cfg.data_dir) == cfg  # data_dir is stored resolved
    state = torch.load(run_dir / "model.pt")
    model = build_model(cfg.model, cfg.norm_spec, 10, (1, 28, 28), cfg.bias)
    model.load_state_dict(state)  # loadable into the model the config names
    return metrics, clients, state


def test_cli_bn_classes_1_end_to_end(tmp_path):
    out = tmp_path / "bn"
    proc = subprocess.run(
        [sys.executable, "-m", "flnorm.cli", "run", "--norm", "bn", "--strategy", "fedavg",
         "--partition", "classes-1", "--clients", "4", "--rounds", "2", "--local-steps", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 2/2: test_accuracy" in proc.stderr
    assert f"results: {out}" in proc.stdout
    cfg = ExperimentConfig(norm="bn", partition="classes-1", clients=4, rounds=2, local_steps=3, out=str(out))
    _, _, state = _check_run_dir(out, cfg)
    counter = state["body.0.2.num_batches_tracked"]
    assert counter.dtype == torch.int64 and int(counter) == 2 * 3  # 2 rounds x 3 steps


def test_python_api_fn_fedprox_learns(tmp_path):
    cfg = ExperimentConfig(
        norm="fn", strategy="fedprox", partition="iid", clients=3, rounds=3, local_steps=10,
        lr=0.05, out=str(tmp_path / "fn"),
    )
    metrics = run_experiment(cfg)
    assert metrics.attrs["run_dir"] == str(tmp_path / "fn")
    _check_run_dir(tmp_path / "fn", cfg)
    assert metrics["union_accuracy"].iloc[-1] > 0.5  # chance is 0.1
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    resolved = json.loads((tmp_path / "fn" / "config.json").read_text())["resolved"]
    assert resolved["engine"] == "flnorm"
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from flnorm.runner import engine, ray_backend

    assert not engine.active() and RayBackend.build is not ray_backend._build  # Flower's code is back


def test_failing_run_exits_non_zero_and_keeps_results(tmp_path, monkeypatch, capsys):
    """A server-side failure in round 2 propagates out of the simulation; round 1 stays."""
    from flnorm.cli import main
    from flnorm.runner.recorder import RoundRecorder

    original = RoundRecorder.__call__

    def failing(self, server_round, arrays):
        if server_round == 2:
            raise RuntimeError("injected failure in round 2")
        return original(self, server_round, arrays)

    monkeypatch.setattr(RoundRecorder, "__call__", failing)
    out = tmp_path / "failing"
    code = main(["run", "--clients", "2", "--rounds", "3", "--local-steps", "2", "--out", str(out)])
    assert code == 1
    assert "injected failure in round 2" in capsys.readouterr().err
    assert list(pd.read_csv(out / "metrics.csv")["round"]) == [1]


def test_eval_every_leaves_skipped_rounds_empty(tmp_path):
    cfg = ExperimentConfig(
        norm="bn", strategy="precisebn", partition="iid", clients=3, rounds=3, local_steps=3,
        eval_every=2, out=str(tmp_path / "run"),
    )
    metrics = run_experiment(cfg)
    evaluated = metrics["test_accuracy"].notna().tolist()
    assert evaluated == [False, True, True]  # round 2 (every 2nd) and the last
    assert metrics["union_accuracy"].notna().tolist() == evaluated
    assert metrics["train_loss"].notna().all() and (metrics["failures"] == 0).all()
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert clients.groupby("round")["test_accuracy"].count().tolist() == [0, 3, 3]
