"""The LN/FN paper's Table 4 layout on the embedded dataset, plus an lr sweep and seeds.

    .venv/bin/python experiments/reproduce_table4.py --rounds 30 --eval-every 5 --window 10

Setup as in "Understanding the Role of Layer Normalization in Label-Skewed Federated
Learning" (TMLR 2024): 10 clients, all every round, E = 10 local steps of batch 32, plain
SGD lr 0.01, bias-free CNN with the norm after each activation, test set split like the
train set, accuracy averaged over clients. The dataset is mnist5k (the paper: CIFAR-10),
and the run is far shorter than the paper's 10,000 rounds.

Writes three grids under ``--out`` (resumable: re-running skips finished cells) and
prints the tables in Markdown: methods x partitions (seed 0), classes-1 with seeds
(mean +- std), and the lr sweep under classes-1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from flnorm import ExperimentConfig, run_grid

METHODS = {
    "FedAvg": {"norm": "none", "strategy": "fedavg"},
    "FedGN": {"norm": "gn", "strategy": "fedavg"},
    "FedAvg+BN": {"norm": "bn", "strategy": "fedavg"},
    "FedBN": {"norm": "bn", "strategy": "fedbn"},
    "FedFN": {"norm": "fn", "strategy": "fedavg"},
    "FedLN": {"norm": "ln", "strategy": "fedavg"},
    "BN pooled": {"norm": "bn", "strategy": "fedavg-pooled"},
    "PreciseBN": {"norm": "bn", "strategy": "precisebn"},
}
PARTITIONS = ["classes-1", "classes-2", "dirichlet-0.1"]
# The paper's CIFAR-10 CNN numbers (Table 4): classes-1 / classes-2 / Dir(0.1).
PAPER = {
    "FedAvg": (56.8, 71.8, 73.1), "FedGN": (77.2, 77.5, 79.2), "FedAvg+BN": (9.6, 24.6, 58.8),
    "FedBN": (10.0, 19.9, 41.3), "FedFN": (77.1, 76.7, 78.1), "FedLN": (77.7, 77.7, 79.9),
}
LR_METHODS = ["FedAvg", "FedLN", "FedFN"]
LRS = [0.001, 0.01, 0.05, 0.1]
SEEDS = [0, 1, 2]


def method_of(row: pd.Series) -> str:
    return next(k for k, v in METHODS.items() if v == {"norm": row["norm"], "strategy": row["strategy"]})


def pct(values: pd.Series) -> str:
    if len(values) > 1:
        return f"{100 * values.mean():.1f} ± {100 * values.std(ddof=1):.1f}"
    return f"{100 * values.iloc[0]:.1f}"


def settle(table: pd.DataFrame, grid_dir: Path, rounds: int, window: int) -> pd.DataFrame:
    """Each cell's global and personalized accuracy as the mean of its evaluations in the
    last ``window`` rounds (one round's figure under label skew swings by several points)."""
    path = grid_dir / "rounds.csv"
    if table.empty or not path.exists():
        return table
    curves = pd.read_csv(path).dropna(subset=["test_accuracy"])
    late = curves[curves["round"] > rounds - window].groupby("cell")[["test_accuracy", "personal_accuracy"]].mean()
    table = table.copy()
    for col in late:
        table[col] = table["cell"].map(late[col])
    return table


def print_trends(path: Path, rounds: int, window: int = 10) -> None:
    """How flat each curve is: mean accuracy over the last ``window`` rounds minus the
    mean over the ``window`` before (evaluated rounds only), in points."""
    if not path.exists():
        return
    curves = pd.read_csv(path).dropna(subset=["test_accuracy"])
    curves["method"] = [method_of(row) for _, row in curves.iterrows()]
    last = curves[curves["round"] > rounds - window]
    before = curves[(curves["round"] > rounds - 2 * window) & (curves["round"] <= rounds - window)]
    trend = 100 * (last.groupby(["method", "partition"])["test_accuracy"].mean()
                   - before.groupby(["method", "partition"])["test_accuracy"].mean())
    table = trend.unstack("partition").reindex(index=list(METHODS), columns=PARTITIONS)
    print(f"\n### Trend: mean global accuracy over rounds {rounds - window + 1}-{rounds} minus "
          f"rounds {rounds - 2 * window + 1}-{rounds - window} (points; near 0 = flat)\n")
    print("| method | " + " | ".join(PARTITIONS) + " |\n" + "|---" * (len(PARTITIONS) + 1) + "|")
    for method, row in table.iterrows():
        print(f"| {method} | " + " | ".join("-" if pd.isna(v) else f"{v:+.1f}" for v in row) + " |")


def print_features(path: Path, rounds: int, window: int) -> None:
    """Feature-collapse diagnostics per method and partition over the last ``window`` rounds:
    mean penultimate-feature norm after local training, and the top singular value's share
    of the top five of one client's feature matrix (1.0 = every feature on one direction)."""
    if not path.exists():
        return
    curves = pd.read_csv(path)
    if "feature_norm" not in curves:
        return
    curves = curves[curves["round"] > rounds - window].copy()
    curves["method"] = [method_of(row) for _, row in curves.iterrows()]
    svs = curves[[f"sv{i}" for i in range(1, 6)]]
    curves["sv1_share"] = svs["sv1"] / svs.sum(axis=1)
    table = curves.groupby(["method", "partition"])[["feature_norm", "sv1_share"]].mean()
    print(f"\n### Feature diagnostics, rounds {rounds - window + 1}-{rounds}: mean feature norm / "
          "top singular value's share of the top five\n")
    print("| method | " + " | ".join(PARTITIONS) + " |\n" + "|---" * (len(PARTITIONS) + 1) + "|")
    for method in METHODS:
        cells = []
        for part in PARTITIONS:
            if (method, part) in table.index:
                norm, share = table.loc[(method, part)]
                cells.append(f"{norm:.1f} / {share:.2f}")
            else:
                cells.append("-")
        print(f"| {method} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every N rounds and at the last")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", default="runs/table4")
    parser.add_argument("--report-only", action="store_true",
                        help="print the tables from the finished cells on disk; run nothing")
    parser.add_argument("--window", type=int, default=10,
                        help="report the mean of each cell's evaluations in the last N rounds")
    parser.add_argument("--precise-passes", type=int, default=1,
                        help="PreciseBN passes per round (0 = exact, one per BN layer; 1 is 3x cheaper)")
    args = parser.parse_args()
    base = ExperimentConfig(clients=10, rounds=args.rounds, local_steps=10, batch_size=32, lr=0.01,
                            bias=False, precise_passes=args.precise_passes, eval_every=args.eval_every)
    out = Path(args.out)
    start = time.perf_counter()
    grids = {
        "methods": dict(base=base.replace(diagnostics=True), variants=list(METHODS.values()),
                        partition=PARTITIONS, seed=[0]),
        "seeds": dict(base=base, partition=["classes-1"], seed=SEEDS[1:],
                      variants=[METHODS[m] for m in ("FedAvg", "FedGN", "FedAvg+BN", "FedBN", "FedFN", "FedLN")]),
        "lr": dict(base=base, variants=[METHODS[m] for m in LR_METHODS], partition=["classes-1"],
                   lr=[lr for lr in LRS if lr != 0.01]),
    }
    tables = {}
    for name, spec in grids.items():
        if args.report_only:
            path = out / name / "results.csv"
            tables[name] = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["norm", "strategy"])
            tables[name] = tables[name][tables[name].get("status", pd.Series(dtype=str)) == "finished"]
        else:
            tables[name] = run_grid(out=out / name, parallel=args.parallel, **spec)
        tables[name] = settle(tables[name], out / name, args.rounds, args.window)
    main_grid, seeds, sweep = tables["methods"], tables["seeds"], tables["lr"]
    seconds = time.perf_counter() - start
    for table in (main_grid, seeds, sweep):
        table["method"] = [method_of(row) for _, row in table.iterrows()]

    late = f"mean of the evaluations in rounds {args.rounds - args.window + 1}-{args.rounds}"
    print(f"\n### Methods x partitions (mnist5k, {args.rounds} rounds, seed 0): global accuracy %, "
          f"{late}, paper's CIFAR-10 in brackets\n")
    print("| method | " + " | ".join(PARTITIONS) + " | personalized classes-1 |")
    print("|---" * (len(PARTITIONS) + 2) + "|")
    for method in METHODS:
        cells = []
        for i, part in enumerate(PARTITIONS):
            rows = main_grid[(main_grid["method"] == method) & (main_grid["partition"] == part)]
            paper = f" ({PAPER[method][i]})" if method in PAPER else ""
            if rows.empty:
                cells.append("not run")
            else:
                row = rows.iloc[0]
                cells.append(f"{100 * row['test_accuracy']:.1f}{paper}" if row["status"] == "finished" else "failed")
        c1 = main_grid[(main_grid["method"] == method) & (main_grid["partition"] == "classes-1")]
        personal = f"{100 * c1.iloc[0]['personal_accuracy']:.1f}" if len(c1) else "-"
        print(f"| {method} | " + " | ".join(cells) + f" | {personal} |")

    both = pd.concat([main_grid[main_grid["partition"] == "classes-1"], seeds])
    print(f"\n### classes-1, seeds {SEEDS}: global accuracy % ({late}; mean ± std over seeds)\n")
    print("| method | global | personalized |\n|---|---|---|")
    for method, group in both.groupby("method", sort=False):
        print(f"| {method} | {pct(group['test_accuracy'])} | {pct(group['personal_accuracy'])} |")

    lrs = pd.concat([main_grid[(main_grid["partition"] == "classes-1") & main_grid["method"].isin(LR_METHODS)]
                     .assign(lr=0.01), sweep])
    print(f"\n### lr sweep, classes-1, seed 0: global accuracy % ({late})\n")
    print("| method | " + " | ".join(f"lr {lr}" for lr in LRS) + " |\n" + "|---" * (len(LRS) + 1) + "|")
    for method in LR_METHODS:
        row = [lrs[(lrs["method"] == method) & (lrs["lr"] == lr)]["test_accuracy"] for lr in LRS]
        print(f"| {method} | " + " | ".join(f"{100 * r.iloc[0]:.1f}" if len(r) else "-" for r in row) + " |")
    print_trends(out / "methods" / "rounds.csv", args.rounds, args.window)
    print_features(out / "methods" / "rounds.csv", args.rounds, args.window)
    print(f"\n{seconds:.0f} s for this invocation ({len(main_grid) + len(seeds) + len(sweep)} cells)")


if __name__ == "__main__":
    main()
