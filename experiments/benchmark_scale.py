"""Scale: seconds per round and peak memory for 10, 100 and 1,000 virtual clients.

Each size runs ``flnorm run`` in a subprocess (iid partition of mnist5k, paper CNN, 10 %
of the clients sampled for training each round, evaluation of 10 % at the last round
only) while this script samples the resident memory of the whole process tree (driver,
Ray's daemons and actors) every 0.2 s.

    .venv/bin/python experiments/benchmark_scale.py --clients 10 100 1000 --rounds 10

Prints, per size: steady seconds per round (mean of rounds 2..R), peak memory (sum of RSS
over the tree: shared pages count once per process, so this overstates), the tree's RSS
after round 2 and after the last round, its PSS after the last round (proportional set
size: each shared page split among the processes that map it, the tree's real
footprint), and the least-squares slope of the tree's RSS over rounds 3..R-1 and over the
second half of the run, R/2..R-1, in MiB per round (memory must not grow with rounds: on
a long run the second-half slope shows whether the early growth is warm-up).
``--rss-csv`` keeps the tree's RSS after every round.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil


def tree_rss(root: psutil.Process, proportional: bool = False) -> int:
    """Resident memory of ``root`` and its descendants; ``proportional``: PSS, shared pages split."""
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss if proportional else p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _slope_mib(after_round: dict[int, int], first: int, last: int) -> float:
    """Least-squares slope of the RSS after rounds ``first..last``, MiB per round."""
    xs = [k for k in after_round if first <= k <= last]
    if len(xs) < 3:
        return float("nan")
    return float(np.polyfit(xs, [after_round[k] for k in xs], 1)[0] / 2**20)


def run_size(clients: int, rounds: int, fraction: float, out: Path) -> tuple[dict[str, float], dict[int, int]]:
    cmd = [sys.executable, "-m", "flnorm.cli", "run", "--clients", str(clients), "--rounds", str(rounds),
           "--partition", "iid", "--fraction-train", str(fraction), "--fraction-evaluate", str(fraction),
           "--eval-every", str(rounds), "--local-steps", "10", "--batch-size", "32", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak, after_round, pss_after = 0, {}, {}
    metrics = out / "metrics.csv"
    while proc.poll() is None:
        rss = tree_rss(root)
        peak = max(peak, rss)
        if metrics.exists():
            done = sum(1 for _ in metrics.open()) - 1
            if done not in after_round:
                after_round[done] = rss
                pss_after[done] = tree_rss(root, proportional=True)  # slower: once a round
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"{clients} clients: flnorm run exited {proc.returncode}")
    m = pd.read_csv(metrics)
    last = max(k for k in after_round if k < rounds) if after_round else 0  # before the final evaluation
    half = max(3, rounds // 2)
    return {
        "clients": clients,
        "sampled/round": int(m["clients_trained"].iloc[-1]),
        "s/round": m["seconds"].iloc[1:].mean(),
        "peak GiB": peak / 2**30,
        "GiB after round 2": after_round.get(2, float("nan")) / 2**30,
        f"GiB after round {half}": after_round.get(half, float("nan")) / 2**30,
        f"GiB after round {last}": after_round.get(last, float("nan")) / 2**30,
        f"PSS GiB after round {last}": pss_after.get(last, float("nan")) / 2**30,
        "MiB/round from round 3": _slope_mib(after_round, 3, last),
        f"MiB/round from round {half}": _slope_mib(after_round, half, last),
    }, after_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rss-csv", type=Path, help="write the tree's RSS after every round here")
    args = parser.parse_args()
    rows, traces = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            row, after_round = run_size(n, args.rounds, args.fraction, Path(tmp) / f"c{n}")
            rows.append(row)
            traces += [{"clients": n, "round": k, "rss_gib": v / 2**30} for k, v in sorted(after_round.items())]
            print(row, flush=True)
    if args.rss_csv:
        pd.DataFrame(traces).to_csv(args.rss_csv, index=False)
    print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
