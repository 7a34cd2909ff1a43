"""A round's content goes to Ray's object store once, and the ClientApps see the messages they would have."""

import pandas as pd
import pytest
import ray
import torch
from flwr.app import RecordDict

from flnorm import ExperimentConfig
from flnorm.runner import shared_content
from flnorm.runner.simulation import prepare, run_prepared

pytestmark = pytest.mark.slow

TIMING = {"seconds", "elapsed", "timestamp"}
PLACEMENT_AND_TIME = ["fit_seconds", "eval_seconds", "ray_node"]


def _run(cfg: ExperimentConfig, out, monkeypatch, min_bytes: int) -> tuple[pd.DataFrame, int]:
    """The run's metrics and how many message contents were put in Ray's object store."""
    put, stored = ray.put, []

    def counting_put(value, *args, **kwargs):
        if isinstance(value, RecordDict):
            stored.append(value)
        return put(value, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shared_content, "SHARE_MIN_BYTES", min_bytes)
        patch.setattr(ray, "put", counting_put)
        metrics = run_prepared(prepare(cfg.replace(out=str(out))))
    return metrics, len(stored)


def test_shared_contents_give_the_same_run_to_the_bit_with_one_store_write_per_phase(
        tmp_path, monkeypatch, shared_ray):
    """FedBN (its messages lack the BN keys) with BN statistics: a run whose contents go to the
    object store once equals, to the bit, one whose every message carries its content."""
    cfg = ExperimentConfig(norm="bn", strategy="fedbn", clients=4, rounds=3, local_steps=3, partition="classes-2",
                           diagnostics=True)
    shared, puts = _run(cfg, tmp_path / "shared", monkeypatch, shared_content.SHARE_MIN_BYTES)
    whole, no_puts = _run(cfg, tmp_path / "whole", monkeypatch, 1 << 40)
    assert puts == 2 * cfg.rounds and no_puts == 0  # one train and one evaluate content a round
    columns = [c for c in shared.columns if c not in TIMING]
    pd.testing.assert_frame_equal(shared[columns], whole[columns], check_exact=True)
    clients = [pd.read_csv(tmp_path / run / "clients.csv").drop(columns=PLACEMENT_AND_TIME)
               for run in ("shared", "whole")]
    pd.testing.assert_frame_equal(*clients, check_exact=True)
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("shared", "whole"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
