"""Where a deployment round goes: a SuperLink and SuperNodes on loopback, as the README deploys.

Starts an insecure ``flower-superlink`` and ``--nodes`` ``flower-supernode`` processes
(each with its own ``FLWR_HOME``), runs ``flwr run .`` with the default experiment's
model for ``--rounds`` rounds, stops every process by PID, and prints per steady round
(mean of rounds 2..R): its wall time, the clients' own compute (``fit_seconds`` and
``eval_seconds`` of ``clients.csv``, the slowest client of each phase), and the rest:
Flower starting a ``flwr-clientapp`` process per message (Python, torch and flnorm
imports, the app loaded from the FAB), the SuperNodes' 3 s idle poll, and message
transfer.

    .venv/bin/python experiments/benchmark_deploy.py --nodes 3 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd

from flnorm import ExperimentConfig, deploy
from flower_app import ROOT, copy_app, free_port, run_config

def wait_healthy(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"SuperLink on port {port} not healthy after {timeout} s")


def stamp_lines(proc: subprocess.Popen, log: Path, t0: float) -> None:
    """Copy ``proc``'s output to ``log``, each line prefixed by the seconds since ``t0``."""
    with log.open("w") as fh:
        for line in proc.stdout:
            fh.write(f"{time.monotonic() - t0:8.2f} {line}")
            fh.flush()


def import_seconds() -> float:
    """A fresh Python importing the ClientApp module (what every ``flwr-clientapp`` does)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import clients.client_app"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def deployment_rounds(nodes: int, rounds: int, local_steps: int, tmp: Path) -> pd.DataFrame:
    """Run the deployment; return its ``metrics.csv`` with the clients' slowest times merged."""
    app = copy_app(tmp / "app")
    link_port = free_port()
    address = f"127.0.0.1:{link_port}"
    started: list[subprocess.Popen] = []

    t0 = time.monotonic()

    def start(cmd: list[str], home: str, name: str) -> None:
        proc = subprocess.Popen(cmd, env=deploy.flower_env(tmp / home), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=tmp, text=True)
        started.append(proc)
        threading.Thread(target=stamp_lines, args=(proc, tmp / f"{name}.log", t0), daemon=True).start()

    try:
        start(deploy.superlink_command(link_port, "127.0.0.1"), "link", "superlink")
        wait_healthy(link_port)
        for k in range(nodes):
            start(deploy.supernode_command(address, free_port(), deploy.node_config(k, nodes)), f"node{k}", f"node{k}")
        deploy.write_connection(tmp / "cli", "local", address)
        env = deploy.flower_env(tmp / "cli")
        out = tmp / "run"
        cfg = ExperimentConfig(clients=nodes, rounds=rounds, local_steps=local_steps, data_dir=str(ROOT / "data"),
                               out=str(out))

        def flwr(*args: str) -> str:
            return subprocess.run([deploy._bin("flwr"), *args], cwd=app, env=env, capture_output=True,
                                  text=True, check=True, timeout=1800).stdout

        run_id = str(json.loads(flwr("run", ".", "local", "--run-config", run_config(cfg), "--format", "json"))["run-id"])
        flwr("log", run_id, "local", "--stream")  # returns when the run ends
        metrics = pd.read_csv(out / "metrics.csv")
        clients = pd.read_csv(out / "clients.csv")
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    slowest = clients.groupby("round")[["fit_seconds", "eval_seconds"]].max()
    return metrics.merge(slowest, left_on="round", right_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--keep", help="a new directory to keep the processes' logs and the run in")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = deployment_rounds(args.nodes, args.rounds, args.local_steps, Path(args.keep or tmp))
    imports = statistics.median(import_seconds() for _ in range(3))
    steady = metrics[metrics["round"] >= 2]
    wall = steady["seconds"].mean()
    compute = (steady["fit_seconds"] + steady["eval_seconds"]).mean()
    print(f"\n{args.nodes} SuperNodes on loopback, {args.rounds} rounds, {args.local_steps} local steps, "
          "paper CNN (none), 2 messages (train, evaluate) per node and round")
    print(f"{'steady s/round':44}{wall:8.2f}")
    print(f"{'  clients compute (slowest, train + eval)':44}{compute:8.2f}")
    print(f"{'  the rest (processes, polls, transfer)':44}{wall - compute:8.2f}")
    print(f"{'import clients.client_app, fresh Python':44}{imports:8.2f}")
    print(f"{'round 1 s':44}{metrics['seconds'].iloc[0]:8.2f}")
    print(metrics[["round", "seconds", "fit_seconds", "eval_seconds", "clients_trained"]].to_string(index=False))


if __name__ == "__main__":
    main()
