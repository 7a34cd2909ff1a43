"""A round's content goes to Ray's object store once, and the ClientApps see the messages they would have."""

import pytest
import ray
from flwr.app import RecordDict
from same_run import assert_same_run

from flnorm import ExperimentConfig
from flnorm.runner import shared_content
from flnorm.runner.simulation import prepare, run_prepared

pytestmark = pytest.mark.slow

def _run(cfg: ExperimentConfig, out, monkeypatch, min_bytes: int) -> int:
    """Run ``cfg`` into ``out``; how many message contents were put in Ray's object store."""
    put, stored = ray.put, []

    def counting_put(value, *args, **kwargs):
        if isinstance(value, RecordDict):
            stored.append(value)
        return put(value, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shared_content, "SHARE_MIN_BYTES", min_bytes)
        patch.setattr(ray, "put", counting_put)
        run_prepared(prepare(cfg.replace(out=str(out))))
    return len(stored)


def test_shared_contents_give_the_same_run_to_the_bit_with_one_store_write_per_phase(
        tmp_path, monkeypatch, shared_ray):
    """FedBN (its messages lack the BN keys) with BN statistics: a run whose contents go to the
    object store once equals, to the bit, one whose every message carries its content."""
    cfg = ExperimentConfig(norm="bn", strategy="fedbn", clients=4, rounds=3, local_steps=3, partition="classes-2",
                           diagnostics=True)
    puts = _run(cfg, tmp_path / "shared", monkeypatch, shared_content.SHARE_MIN_BYTES)
    no_puts = _run(cfg, tmp_path / "whole", monkeypatch, 1 << 40)
    assert puts == 2 * cfg.rounds and no_puts == 0  # one train and one evaluate content a round
    assert_same_run(tmp_path / "shared", tmp_path / "whole")
