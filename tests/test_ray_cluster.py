"""Clients on an existing Ray cluster: a two-node cluster on loopback (``ray start``), clients
placed on both nodes, and Ray's logical GPUs shared by fractional clients."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from flnorm import ExperimentConfig, run_experiment
from flnorm.errors import ConfigError
from flnorm.runner.simulation import check_cluster
from flower_processes import free_port, left_running, stop_session

RAY = Path(sys.executable).parent / "ray"


def _ray_start(*args: str) -> int:
    """Run ``ray start`` in a session of its own; return that session's id (its daemons keep it)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([str(RAY), "start", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return proc.pid


@pytest.fixture(scope="module")
def cluster():
    """A head node with 1 CPU and a worker node with 4 CPUs and 2 logical GPUs (no CUDA needed)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    sessions = []
    try:
        sessions.append(_ray_start("--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                                   f"--temp-dir={temp}", "--include-dashboard=false"))
        sessions.append(_ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=4", "--num-gpus=2"))
        yield f"127.0.0.1:{port}"
    finally:
        for sid in sessions:
            stop_session(sid)
        shutil.rmtree(temp, ignore_errors=True)
    left = {sid: left_running(sid) for sid in sessions}
    for sid in sessions:
        stop_session(sid)  # stop a leak before failing on it
    assert not any(left.values()), f"left running after the cluster was stopped: {left}"


def _placement(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "clients.csv", dtype={"ray_node": str, "cuda_visible_devices": str},
                       keep_default_na=False)


@pytest.mark.slow
def test_clients_run_on_both_nodes_of_a_cluster(cluster, tmp_path):
    cfg = ExperimentConfig(clients=6, rounds=1, local_steps=2, ray_address=cluster, out=str(tmp_path / "run"))
    metrics = run_experiment(cfg)
    assert len(metrics) == 1 and metrics["clients_trained"].iloc[0] == 6
    placed = _placement(tmp_path / "run")
    assert (placed["ray_node"] != "").all()
    assert placed["ray_node"].nunique() == 2  # the head's 1 CPU and the worker's 4 both hold clients


@pytest.mark.slow
def test_fractional_gpu_clients_share_both_logical_gpus(cluster, tmp_path):
    """0.5 GPU per client: only the worker node fits them, four actors over its two GPUs.
    This machine has no CUDA, so the clients train on the CPU (``device auto``)."""
    cfg = ExperimentConfig(clients=8, rounds=1, local_steps=2, num_gpus=0.5, ray_address=cluster,
                           out=str(tmp_path / "run"))
    run_experiment(cfg)
    placed = _placement(tmp_path / "run")
    assert placed["ray_node"].nunique() == 1
    assert set(placed["cuda_visible_devices"]) == {"0", "1"}


def test_a_client_no_cluster_node_can_hold_is_refused():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    check_cluster(ExperimentConfig(num_cpus=2, ray_address="h:1"), nodes)
    with pytest.raises(ConfigError, match=r"num-gpus=1 .*nodes: 2 CPU/0 GPU\)"):
        check_cluster(ExperimentConfig(num_gpus=1.0, ray_address="h:1"), nodes)


def test_ray_cpus_with_a_cluster_is_refused_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flnorm.cli", "run", "--ray-address", "127.0.0.1:1",
                           "--ray-cpus", "2", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "ray-cpus=2 sizes a Ray started here" in proc.stderr
    assert not (tmp_path / "run").exists()
