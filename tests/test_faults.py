"""Faults in a real Ray simulation: a raising client, a NaN update, a resumed run."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from flnorm import ExperimentConfig
from flnorm.runner.checkpoint import load_checkpoint
from flnorm.runner.recorder import RoundRecorder
from flnorm.runner.simulation import prepare, run_prepared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_raising_client_and_nan_update_do_not_stop_the_run(tmp_path):
    from faulty_client_app import app

    cfg = prepare(ExperimentConfig(norm="bn", clients=4, rounds=3, local_steps=2, partition="iid",
                                   min_replies=3, out=str(tmp_path / "run")))
    metrics = run_prepared(cfg, client_app=app)
    assert metrics["round"].tolist() == [1, 2, 3]  # the run completed
    assert metrics["failures"].tolist() == [0, 1, 1]  # the raise (round 2), the NaN (round 3)
    assert metrics["clients_trained"].tolist() == [4, 3, 3]
    state = torch.load(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not math.isnan(metrics["test_accuracy"].iloc[-1])


def test_too_few_sound_updates_keep_the_model(tmp_path):
    """min-replies 4 of 4: rounds 2 and 3 (one bad client each) leave the model as it was."""
    from faulty_client_app import app

    cfg = prepare(ExperimentConfig(norm="bn", clients=4, rounds=3, local_steps=2, partition="iid",
                                   min_replies=4, out=str(tmp_path / "run")))
    run_prepared(cfg, client_app=app)
    after_round_1 = load_checkpoint(tmp_path / "run")  # round 3's checkpoint: still round 1's model
    assert after_round_1.round == 3
    state = torch.load(tmp_path / "run" / "model.pt")
    for k, v in after_round_1.arrays.items():
        np.testing.assert_array_equal(state[k].numpy(), v)


def _stop_after(monkeypatch, last_round):
    original = RoundRecorder.__call__

    def stopping(self, server_round, arrays):
        if server_round > last_round:
            raise RuntimeError(f"stopped after round {last_round}")
        return original(self, server_round, arrays)

    monkeypatch.setattr(RoundRecorder, "__call__", stopping)


COMPARED = ["round", "test_accuracy", "test_loss", "union_accuracy", "union_loss", "train_loss"]


@pytest.mark.parametrize(("norm", "strategy"), [("bn", "fedadam"), ("bn", "fixbn")])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, norm, strategy):
    base = ExperimentConfig(norm=norm, strategy=strategy, clients=3, rounds=4, local_steps=3,
                            partition="classes-2", fixbn_rounds=2)
    whole = run_prepared(prepare(base.replace(out=str(tmp_path / "whole"))))

    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(Exception, match="stopped after round 2"):
            run_prepared(prepare(base.replace(out=str(tmp_path / "split"))))
    assert load_checkpoint(tmp_path / "split").round == 2
    resumed = run_prepared(prepare(base.replace(out=str(tmp_path / "split"), resume=True)))

    pd.testing.assert_frame_equal(resumed[COMPARED], whole[COMPARED])  # same seed, same numbers
    a = torch.load(tmp_path / "whole" / "model.pt")
    b = torch.load(tmp_path / "split" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tmp_path, monkeypatch):
    base = ExperimentConfig(clients=2, rounds=3, local_steps=2, out=str(tmp_path / "run"))
    with monkeypatch.context() as patch:
        _stop_after(patch, 1)
        with pytest.raises(Exception, match="stopped after round 1"):
            run_prepared(prepare(base))
    with pytest.raises(Exception, match="other lr"):
        run_prepared(prepare(base.replace(lr=0.5, resume=True)))


TIMING = {"seconds", "elapsed", "timestamp"}


def test_same_seed_twice_gives_identical_metrics_and_model(tmp_path):
    """Determinism on CPU: two independent simulations of one config agree to the bit."""
    base = ExperimentConfig(norm="bn", strategy="fedbn", clients=3, rounds=3, local_steps=3,
                            partition="classes-2", diagnostics=True)
    first = run_prepared(prepare(base.replace(out=str(tmp_path / "a"))))
    second = run_prepared(prepare(base.replace(out=str(tmp_path / "b"))))
    columns = [c for c in first.columns if c not in TIMING]
    pd.testing.assert_frame_equal(first[columns], second[columns], check_exact=True)  # to the bit
    placement_and_time = ["fit_seconds", "eval_seconds", "ray_node"]  # where and how fast, not what was computed
    clients = [pd.read_csv(tmp_path / run / "clients.csv").drop(columns=placement_and_time) for run in "ab"]
    pd.testing.assert_frame_equal(*clients, check_exact=True)
    a, b = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
