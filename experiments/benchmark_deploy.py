"""Where a deployment round goes: a SuperLink and SuperNodes on loopback, as the README deploys.

Starts an insecure ``flower-superlink`` and ``--nodes`` ``flower-supernode`` processes
(each with its own ``FLWR_HOME``), runs ``flwr run .`` with the default experiment's
model for ``--rounds`` rounds, stops every process by PID, and prints per steady round
(mean of rounds 2..R): its wall time, the clients' own compute (``fit_seconds`` and
``eval_seconds`` of ``clients.csv``, the slowest client of each phase), and the rest:
a ``flwr-clientapp`` process per message (started by the SuperNode's SuperExec; the app
loaded from the FAB), the SuperNodes' 3 s idle poll, and message transfer.

``--supernodes`` picks the SuperNodes' runtime: ``cold`` is Flower's (a fresh Python
importing torch and Flower per message, a 3 s idle poll), ``warm`` is what ``flnorm deploy
supernode`` runs (ClientApps forked from a process that imported them, a 0.2 s idle poll;
``flnorm.deploy_engine``), ``both`` (default) one deployment after the other, with the ratio.

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

from flnorm import ExperimentConfig, deploy, deploy_engine
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


def deployment_rounds(nodes: int, rounds: int, local_steps: int, tmp: Path, warm: bool) -> pd.DataFrame:
    """Run the deployment; return its ``metrics.csv`` with the clients' slowest times merged."""
    app = copy_app(tmp / "app")
    link_port = free_port()
    address = f"127.0.0.1:{link_port}"
    started: list[subprocess.Popen] = []

    t0 = time.monotonic()

    def start(cmd: list[str], home: str, name: str, runtime: Path | None = None, task_poll: float | None = None) -> None:
        env = deploy.flower_env(tmp / home, runtime_bin=runtime, task_poll=task_poll)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp, text=True)
        started.append(proc)
        threading.Thread(target=stamp_lines, args=(proc, tmp / f"{name}.log", t0), daemon=True).start()

    try:
        start(deploy.superlink_command(link_port, "127.0.0.1"), "link", "superlink")
        wait_healthy(link_port)
        for k in range(nodes):
            runtime = deploy_engine.runtime_bin(tmp / f"node{k}") if warm else None
            start(deploy.supernode_command(address, free_port(), deploy.node_config(k, nodes), runtime_bin=runtime),
                  f"node{k}", f"node{k}", runtime, deploy.SUPERNODE_TASK_POLL)
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
    parser.add_argument("--supernodes", choices=("cold", "warm", "both"), default="both",
                        help="how SuperNodes start ClientApp processes (see above)")
    parser.add_argument("--keep", help="a new directory to keep the processes' logs and the runs in")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)
    modes = ["cold", "warm"] if args.supernodes == "both" else [args.supernodes]
    runs: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            runs[mode] = deployment_rounds(args.nodes, args.rounds, args.local_steps,
                                           Path(args.keep or tmp) / mode, warm=mode == "warm")
    imports = statistics.median(import_seconds() for _ in range(3))
    rows: dict[str, list[float]] = {"steady s/round": [], "  clients compute (slowest, train + eval)": [],
                                    "  the rest (processes, polls, transfer)": [], "round 1 s": []}
    for metrics in runs.values():
        steady = metrics[metrics["round"] >= 2]
        wall = steady["seconds"].mean()
        compute = (steady["fit_seconds"] + steady["eval_seconds"]).mean()
        for label, value in zip(rows, (wall, compute, wall - compute, metrics["seconds"].iloc[0]), strict=True):
            rows[label].append(value)
    print(f"\n{args.nodes} SuperNodes on loopback, {args.rounds} rounds, {args.local_steps} local steps, "
          "paper CNN (none), 2 messages (train, evaluate) per node and round")
    print(f"{'SuperNodes':44}" + "".join(f"{mode:>8}" for mode in modes))
    for label, values in rows.items():
        print(f"{label:44}" + "".join(f"{v:8.2f}" for v in values))
    if len(modes) == 2:
        print(f"{'steady round, warm / cold':44}{rows['steady s/round'][1] / rows['steady s/round'][0]:8.2f}")
    print(f"{'import clients.client_app, fresh Python':44}{imports:8.2f}")
    for mode, metrics in runs.items():
        print(f"\n{mode}:")
        print(metrics[["round", "seconds", "fit_seconds", "eval_seconds", "clients_trained"]].to_string(index=False))


if __name__ == "__main__":
    main()
