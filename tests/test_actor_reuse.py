"""Runs inside ``keep_ray()`` (a grid's cells) share their Ray actors; a dead actor is replaced."""

import os
import signal

import pytest
import ray
from ray._private import state
from same_run import assert_same_run

from flnorm import ExperimentConfig
from flnorm.runner.ray_backend import keep_ray
from flnorm.runner.simulation import prepare, run_prepared

pytestmark = pytest.mark.slow


def _actor_pids() -> set[int]:
    """Process ids of the live actors, from Ray's GCS."""
    return {info["Pid"] for info in state.actors(actor_state_name="ALIVE").values()}


def _run(cfg: ExperimentConfig, out) -> None:
    run_prepared(prepare(cfg.replace(out=str(out))))


def test_runs_inside_keep_ray_reuse_the_actors_and_replace_a_dead_one(tmp_path):
    base = ExperimentConfig(norm="bn", strategy="fedbn", clients=3, rounds=2, local_steps=3,
                            partition="classes-2", diagnostics=True)
    with keep_ray():
        _run(base.replace(seed=1), tmp_path / "other")
        first = _actor_pids()
        _run(base, tmp_path / "reused")
        assert _actor_pids() == first  # the second run started no actor and stopped none
        os.kill(min(first), signal.SIGKILL)  # an actor's process dies between two runs
        _run(base, tmp_path / "fresh")
        after = _actor_pids()
        assert len(after) == len(first) and not after & first  # the parked actors were all replaced
    assert not ray.is_initialized()

    # The same config in reused actors (which ran another seed before) and in new ones: to the bit.
    assert_same_run(tmp_path / "reused", tmp_path / "fresh")
