"""BN strategies under one class per client: fedavg vs fedavg-pooled vs fedbn vs precisebn vs fixbn.

    .venv/bin/python experiments/bn_strategies_classes1.py --rounds 30

Paper CNN with BatchNorm on mnist5k, 10 clients holding one class each, 10 local steps of
batch 32, lr 0.01. Prints global accuracy (the global model on every client's test split,
mean over clients, with the BN statistics in ``bn_eval``), personalized accuracy (each
client's own BN state) and union accuracy (whole test set), and writes the table as CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from flnorm import ExperimentConfig, run_experiment

STRATEGIES = ("fedavg", "fedavg-pooled", "fedbn", "precisebn", "fixbn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="runs/bn-classes1")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()
    rows = []
    for strategy in args.strategies:
        cfg = ExperimentConfig(norm="bn", strategy=strategy, partition="classes-1", rounds=args.rounds,
                               out=str(Path(args.out) / strategy))
        metrics = run_experiment(cfg)
        last = metrics.iloc[-1]
        rows.append({
            "strategy": strategy, "rounds": int(last["round"]), "bn_eval": last["bn_eval"],
            "global_accuracy": last["test_accuracy"], "personal_accuracy": last["personal_accuracy"],
            "union_accuracy": last["union_accuracy"], "union_bn_eval": last["union_bn_eval"],
            "seconds": metrics["seconds"].sum(),
        })
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.out) / "summary.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
