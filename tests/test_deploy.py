"""A real deployment on loopback: SuperLink + SuperNodes with TLS and node authentication.

Every process is started by ``flnorm deploy`` (which execs into the Flower process, so
the PID is Flower's) and stopped by PID with its descendants.
"""

import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from flnorm import deploy
from flower_processes import free_port, stop_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
FLNORM = [sys.executable, "-m", "flnorm.cli", "deploy"]


def _wait_healthy(port: int, ca: Path, timeout: float = 60) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"SuperLink on {port} not healthy after {timeout} s")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_tls_authenticated_deployment_survives_a_killed_node(tmp_path):
    pki = deploy.make_tls(tmp_path / "pki")
    keys = {name: deploy.make_node_key(tmp_path / "keys", name) for name in ("node0", "node1", "node2", "intruder")}
    link_port = free_port()
    address = f"127.0.0.1:{link_port}"
    cli_home = tmp_path / "cli"
    deploy.write_connection(cli_home, "secure", address, pki.ca_cert)
    cli_env = deploy.flower_env(cli_home)
    app = tmp_path / "app"
    app.mkdir()
    for item in ("flnorm", "strategies", "clients", "pyproject.toml", "README.md"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, app / item)

    started: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen([*FLNORM, *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        started.append(proc)
        return proc

    def flwr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], cwd=app, env=cli_env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        start(["superlink", "--host", "127.0.0.1", "--port", str(link_port), "--certs", str(pki.ca_cert.parent),
               "--auth", "--flwr-home", str(tmp_path / "link")], "superlink")
        _wait_healthy(link_port, pki.ca_cert)
        for k in range(3):  # register the three sites' public keys, then start them
            reg = subprocess.run(deploy.register_command(keys[f"node{k}"][1], "secure"), env=cli_env,
                                 capture_output=True, text=True, timeout=60)
            assert reg.returncode == 0 and json.loads(reg.stdout)["success"], reg.stdout + reg.stderr
        nodes = [  # node0 starts ClientApps as Flower does, the others warm (flnorm's default)
            start(["supernode", "--superlink", address, "--port", str(free_port()), "--partition-id", str(k),
                   "--num-partitions", "3", "--root-certificates", str(pki.ca_cert),
                   "--key", str(keys[f"node{k}"][0]), "--flwr-home", str(tmp_path / f"node{k}"),
                   *(["--cold"] if k == 0 else [])], f"node{k}")
            for k in range(3)
        ]

        # a node whose key was never registered is refused at once
        intruder = start(["supernode", "--superlink", address, "--port", str(free_port()), "--partition-id", "0",
                          "--num-partitions", "3", "--root-certificates", str(pki.ca_cert),
                          "--key", str(keys["intruder"][0]), "--flwr-home", str(tmp_path / "intruder")], "intruder")
        assert intruder.wait(timeout=60) == 1
        refusal = (tmp_path / "intruder.log").read_text()
        assert "[code: 2004] Failed to activate SuperNode" in refusal

        out = tmp_path / "run"
        run_config = (f"clients=3 rounds=2 local-steps=3 norm='bn' strategy='fedavg-pooled' min-replies=1 "
                      f"data-dir='{ROOT / 'data'}' out='{out}'")
        submitted = flwr("run", ".", "secure", "--run-config", run_config, "--format", "json")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        run_id = str(json.loads(submitted.stdout)["run-id"])

        # SIGKILL one SuperNode and its app processes once round 1 is recorded: a crash, no goodbye
        metrics_file = out / "metrics.csv"
        _wait_for(lambda: metrics_file.exists() and len(pd.read_csv(metrics_file)) >= 1, 300, "round 1")
        victim = psutil.Process(nodes[2].pid)
        for p in [victim, *victim.children(recursive=True)]:
            p.kill()
        assert nodes[2].wait(timeout=30) == -signal.SIGKILL

        flwr("log", run_id, "secure", "--stream", timeout=600)
        status = json.loads(flwr("list", "secure", "--run-id", run_id, "--format", "json").stdout)["runs"][0]
        assert status["status"] == "finished:completed", status
        metrics = pd.read_csv(metrics_file)
        print(metrics[["round", "clients_trained", "failures", "seconds", "test_accuracy"]].to_string())
        assert metrics["round"].tolist() == [1, 2]  # every round ran
        assert metrics["clients_trained"].iloc[0] == 3 and metrics["clients_trained"].iloc[-1] == 2
        assert metrics["failures"].sum() >= 1  # the killed node's unanswered message, reported by the SuperLink
        assert (out / "model.pt").exists() and (out / "checkpoint.pt").exists()
        # a cold node runs flwr-clientapp per message; a warm one forks Flower's run_clientapp instead
        logs = [(tmp_path / f"node{k}.log").read_text() for k in range(3)]
        assert "Start `flwr-clientapp` process" in logs[0] and "flnorm Super" not in logs[0]
        for log in logs[1:]:
            assert "flnorm SuperExec: ClientApp processes forked" in log
            assert "flnorm SuperNode: asks for a message every 0.20 s when idle" in log
            assert "Start `flwr-clientapp` process" not in log and log.count("Sending: train message") >= 1
    finally:
        stop_tree([p.pid for p in started])
        for p in started:
            p.wait(timeout=30)
