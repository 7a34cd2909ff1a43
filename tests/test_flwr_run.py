"""The same app through Flower's own tooling: ``flwr run .`` on a local SuperLink."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flower_processes import free_port, listener_pids, stop_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def flwr(tmp_path_factory):
    """Run ``flwr`` in a copy of the app with its own FLWR_HOME and ports; stop the SuperLink after."""
    base = tmp_path_factory.mktemp("flwr")
    app = base / "app"
    app.mkdir()
    for item in ("flnorm", "strategies", "clients", "pyproject.toml", "README.md"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, app / item)
    http_port, control_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_HOME": str(base / "home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }

    def call(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], cwd=app, env=env, capture_output=True, text=True, timeout=timeout
        )

    yield call
    stop_tree(listener_pids(http_port) + listener_pids(control_port))
    assert not listener_pids(http_port) and not listener_pids(control_port)


def _submit_and_wait(flwr, run_config: str, nodes: int) -> dict:
    proc = flwr("run", ".", "--run-config", run_config, "--federation-config",
                f"num-supernodes={nodes} client-resources-num-cpus=1", "--format", "json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    submitted = json.loads(proc.stdout)
    assert submitted["success"], submitted
    run_id = str(submitted["run-id"])
    flwr("log", run_id, "--stream", timeout=600)  # returns when the run ends
    listing = json.loads(flwr("list", "--run-id", run_id, "--format", "json").stdout)
    return listing["runs"][0]


def test_flwr_run_completes_and_writes_run_dir(flwr, tmp_path):
    out = tmp_path / "run"
    # precisebn: train, evaluate and query (statistics) messages through the SuperLink
    status = _submit_and_wait(
        flwr, f"clients=3 rounds=2 local-steps=3 norm='bn' strategy='precisebn' out='{out}'", 3
    )
    assert status["status"] == "finished:completed", status
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [1, 2]
    assert metrics["test_accuracy"].notna().all()
    assert (out / "model.pt").exists()
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["engine"] == "flnorm"  # Flower's simulation process adopted flnorm's engine
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["clients"] == 3 and saved["norm"] == "bn" and saved["strategy"] == "precisebn"
    assert set(metrics["bn_eval"]) == {"precise"}


@pytest.mark.parametrize(
    "run_config, nodes, message",
    [
        ("clients=2 rounds=1 norm='foo'", 2, "unknown norm 'foo'"),
        ("clients=3 rounds=1", 2, "only 2 of clients=3 nodes connected (the simulation has no more)"),
    ],
)
def test_flwr_run_bad_setup_is_reported_failed(flwr, tmp_path, run_config, nodes, message):
    start = time.monotonic()
    status = _submit_and_wait(flwr, f"{run_config} out='{tmp_path / 'bad'}'", nodes)
    assert time.monotonic() - start < 90  # not the default node-timeout of 120 s
    assert status["status"] == "finished:failed"
    assert message in status.get("status-details", "")
