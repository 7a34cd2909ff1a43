"""The LN/FN paper's Table 4 on the embedded dataset, the BN strategies, seeds and an lr sweep.

    .venv/bin/python experiments/reproduce_table4.py            # runs what is missing, prints the tables
    .venv/bin/python experiments/reproduce_table4.py --report-only

Setup as in "Understanding the Role of Layer Normalization in Label-Skewed Federated
Learning" (TMLR 2024): 10 clients, all every round, E = 10 local steps of batch 32, plain
SGD lr 0.01, bias-free CNN with the norm after each activation, test set split like the
train set, accuracy averaged over clients. The dataset is mnist5k (the paper: CIFAR-10),
and the runs are far shorter than the paper's 10,000 rounds, but long enough to settle:
``--rounds-classes1`` under one class per client, ``--rounds`` elsewhere.

Each cell runs under ``--out``; its per-round metrics are kept as one CSV under
``--results`` (small files, kept in git). Re-running skips the cells kept there, so the
reproduction can be spread over several sittings (Ctrl-C stops it; a cell cut short continues
from its checkpoint); ``--report-only`` prints the tables in
Markdown from the kept files. Every figure is the mean of a
cell's evaluations in its last ``--window`` rounds; *flatness* is that mean minus the mean
of the ``--window`` rounds before, in points; a cell whose flatness exceeds 1 point
is marked ``*`` (not flat).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flnorm import ExperimentConfig, run_experiment
from flnorm.runner.checkpoint import resumable
from flnorm.runner.progress import Progress
from flnorm.runner.stopping import Stopped, finish_stopped, stop_on_signals

METHODS = {
    "FedAvg": {"norm": "none", "strategy": "fedavg"},
    "FedGN": {"norm": "gn", "strategy": "fedavg"},
    "FedAvg+BN": {"norm": "bn", "strategy": "fedavg"},
    "FedBN": {"norm": "bn", "strategy": "fedbn"},
    "FedFN": {"norm": "fn", "strategy": "fedavg"},
    "FedLN": {"norm": "ln", "strategy": "fedavg"},
    "BN pooled": {"norm": "bn", "strategy": "fedavg-pooled"},
    "PreciseBN": {"norm": "bn", "strategy": "precisebn"},
    "SiloBN": {"norm": "bn", "strategy": "silobn"},
    "FixBN": {"norm": "bn", "strategy": "fixbn"},
}
TABLE4 = ["FedAvg", "FedGN", "FedAvg+BN", "FedBN", "FedFN", "FedLN", "BN pooled", "PreciseBN"]
BN_TABLE = ["FedAvg+BN", "BN pooled", "FedBN", "SiloBN", "PreciseBN", "FixBN"]
PARTITIONS = ["classes-1", "classes-2", "dirichlet-0.1"]
# The paper's CIFAR-10 CNN numbers (Table 4): classes-1 / classes-2 / Dir(0.1).
PAPER = {
    "FedAvg": (56.8, 71.8, 73.1), "FedGN": (77.2, 77.5, 79.2), "FedAvg+BN": (9.6, 24.6, 58.8),
    "FedBN": (10.0, 19.9, 41.3), "FedFN": (77.1, 76.7, 78.1), "FedLN": (77.7, 77.7, 79.9),
}
SEED_METHODS = ["FedAvg", "FedGN", "FedAvg+BN", "FedBN", "FedFN", "FedLN"]
LR_METHODS = ["FedAvg", "FedLN", "FedFN"]
LRS = [0.001, 0.01, 0.05, 0.1]
SEEDS = [0, 1, 2]
PRECISION_METHODS = ["FedLN"]
DEFAULTS = {"seed": 0, "lr": 0.01, "precision": "fp32"}  # what a cell's CSV records when its grid leaves it
KEYS = ["method", "partition", *DEFAULTS]  # what tells two cells apart
NOT_FLAT = 1.0  # points


@dataclass(frozen=True)
class Grid:
    """A group of cells: methods crossed with ``axes``, at ``rounds`` rounds."""

    name: str
    methods: list[str]
    rounds_key: str  # "classes1" or "other": which --rounds flag applies
    axes: dict[str, list[Any]] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)


GRIDS = [
    Grid("methods-classes-1", TABLE4, "classes1", {"partition": ["classes-1"]}, {"diagnostics": True}),
    Grid("methods-classes-2", TABLE4, "other", {"partition": ["classes-2"]}, {"diagnostics": True}),
    Grid("methods-dirichlet-0.1", TABLE4, "other", {"partition": ["dirichlet-0.1"]}, {"diagnostics": True}),
    Grid("bn-classes-1", ["SiloBN", "FixBN"], "classes1", {"partition": ["classes-1"]}),
    Grid("seeds", SEED_METHODS, "classes1", {"partition": ["classes-1"], "seed": SEEDS[1:]}),
    Grid("lr", LR_METHODS, "classes1", {"partition": ["classes-1"], "lr": [lr for lr in LRS if lr != 0.01]}),
    # bf16 against the fp32 cell of methods-classes-2 (emulated where the CPU lacks bf16: the slowest cell)
    Grid("precision", PRECISION_METHODS, "other", {"partition": ["classes-2"], "precision": ["bf16"]}),
]


def method_of(row: Any, methods: dict[str, dict[str, str]] = METHODS) -> str:
    """The name in ``methods`` of a curve's row (a Series or a named tuple), by its norm and strategy."""
    return next(k for k, v in methods.items() if v == {"norm": row.norm, "strategy": row.strategy})


def cells_of(grid: Grid) -> list[tuple[str, dict[str, Any]]]:
    """``(name, config changes)`` of every cell of ``grid``."""
    axes = list(grid.axes)
    out = []
    for method in grid.methods:
        for combo in itertools.product(*grid.axes.values()):
            values = dict(zip(axes, combo, strict=True))
            name = ",".join([method.replace(" ", "-").replace("+", "-")] + [f"{k}={v}" for k, v in values.items()])
            out.append((name, {**METHODS[method], **values}))
    return out


def kept(path: Path, rounds: int) -> bool:
    """Whether ``path`` holds a finished cell's curve (all ``rounds`` rounds)."""
    return path.exists() and int(pd.read_csv(path)["round"].max()) >= rounds


def rounds_of(grid: Grid, args: argparse.Namespace) -> int:
    return args.rounds_classes1 if grid.rounds_key == "classes1" else args.rounds


def run(grid: Grid, args: argparse.Namespace, progress: Progress) -> None:
    """Run the cells of ``grid`` not yet kept under ``--results``; keep each one's curve.

    An attempt interrupted earlier (Ctrl-C, SIGTERM) continues from its checkpoint.
    """
    rounds = rounds_of(grid, args)
    base = ExperimentConfig(
        clients=10, rounds=rounds, local_steps=10, batch_size=32, lr=0.01, bias=False,
        precise_passes=0, eval_every=args.eval_every, **grid.base,
    )
    keep = Path(args.results) / grid.name
    keep.mkdir(parents=True, exist_ok=True)
    for name, changes in cells_of(grid):
        path = keep / f"{name}.csv"
        if not kept(path, rounds):
            cfg = base.replace(out=str(Path(args.out) / grid.name / name), **changes)
            run_cell(cfg, path, progress, f"{grid.name}/{name}", cell=name, **{**DEFAULTS, **changes})


def run_grids(args: argparse.Namespace, progress: Progress) -> None:
    for grid in GRIDS:
        if grid.name in args.grids:
            run(grid, args, progress)


def run_cell(cfg: ExperimentConfig, path: Path, progress: Progress, label: str, **columns: Any) -> None:
    """Run one cell and keep its per-round metrics, plus ``columns``, as the CSV ``path``.

    A run directory left by an interrupted attempt (Ctrl-C, SIGTERM) continues from its
    checkpoint; anything else there is removed. A failed cell is reported under ``label``
    and does not stop the others.
    """
    if resumable(cfg.out, cfg):
        cfg = cfg.replace(resume=True)
    else:
        shutil.rmtree(cfg.out, ignore_errors=True)  # nothing that can continue
    try:
        metrics = run_experiment(cfg)
    except Exception as exc:  # noqa: BLE001 - a failed cell must not stop the others
        progress.step(f"{label} failed: {type(exc).__name__}: {exc}")
        return
    metrics.assign(**columns).to_csv(path, index=False)
    progress.step(f"kept {path}")


def run_stoppable(work: Callable[[], None]) -> None:
    """``work()`` with one Ray instance for every cell, stopped cleanly by Ctrl-C or SIGTERM.

    A stop exits with the signal's code (130, 143) after saying how to continue: the next
    invocation skips kept cells and resumes the one cut short.
    """
    from flnorm.runner.ray_backend import keep_ray

    try:
        with stop_on_signals(), keep_ray():
            work()
    except Stopped as stop:
        print(f"{stop}; run again to continue (the cell cut short resumes)", file=sys.stderr)
        raise SystemExit(finish_stopped(stop.exit_code)) from None


def cell_counts(args: argparse.Namespace) -> tuple[int, int]:
    """(cells in the chosen grids, cells already kept)."""
    paths = [(Path(args.results) / g.name / f"{name}.csv", rounds_of(g, args))
             for g in GRIDS if g.name in args.grids for name, _ in cells_of(g)]
    return len(paths), sum(kept(p, r) for p, r in paths)


def curves(args: argparse.Namespace) -> pd.DataFrame:
    """Every evaluated round of every kept cell, with its ``method`` and ``grid``."""
    frames = [
        pd.read_csv(path).assign(grid=grid.name)
        for grid in GRIDS for path in sorted((Path(args.results) / grid.name).glob("*.csv"))
    ]
    if not frames:
        raise SystemExit(f"no results under {args.results}: run without --report-only first")
    data = pd.concat(frames, ignore_index=True).dropna(subset=["test_accuracy"])
    for key, default in DEFAULTS.items():  # cells kept before a key was recorded ran at its default
        data[key] = data[key].fillna(default) if key in data else default
    data["method"] = [method_of(row) for _, row in data.iterrows()]
    return data


def settle(data: pd.DataFrame, window: int, keys: list[str] = KEYS) -> pd.DataFrame:
    """Per cell (one group of ``keys``): the mean of its last ``window`` rounds' evaluations
    (``global``, ``personal``, ``union``, in %), the flatness against the ``window`` before
    (of the global accuracy; ``personal_flatness`` of the personalized one),
    rounds, seconds; and, for every other column named ``*_accuracy_*`` (per domain), its
    mean over the last ``window`` rounds, in %."""
    per_domain = [c for c in data if "_accuracy_" in c]
    rows = []
    for values, cell in data.groupby(keys):
        last_round = int(cell["round"].max())
        late = cell[cell["round"] > last_round - window]
        before = cell[(cell["round"] > last_round - 2 * window) & (cell["round"] <= last_round - window)]
        rows.append(dict(
            zip(keys, values, strict=True),
            rounds=last_round, evaluations=len(late),
            global_=100 * late["test_accuracy"].mean(), personal=100 * late["personal_accuracy"].mean(),
            union=100 * late["union_accuracy"].mean(),
            flatness=100 * (late["test_accuracy"].mean() - before["test_accuracy"].mean()),
            personal_flatness=100 * (late["personal_accuracy"].mean() - before["personal_accuracy"].mean()),
            seconds=cell["elapsed"].max() if "elapsed" in cell else float("nan"),
            **{c: 100 * late[c].mean() for c in per_domain},
        ))
    return pd.DataFrame(rows)


def fmt(value: float, flatness: float | None = None) -> str:
    mark = "*" if flatness is not None and abs(flatness) > NOT_FLAT else ""
    return f"{value:.1f}{mark}"


def report(args: argparse.Namespace) -> None:
    data = curves(args)
    cells = settle(data, args.window).set_index(KEYS)
    w = args.window

    def cell(method: str, partition: str = "classes-1", seed: int = 0, lr: float = 0.01,
             precision: str = "fp32") -> pd.Series | None:
        key = (method, partition, seed, lr, precision)
        return cells.loc[key] if key in cells.index else None

    print(f"\n### Table 4 layout: global accuracy % (mean of the evaluations in the last {w} rounds; "
          f"flatness in brackets; * = not flat), paper's CIFAR-10 figure after the slash\n")
    print("| method | " + " | ".join(PARTITIONS) + " | personalized, classes-1 |")
    print("|---" * (len(PARTITIONS) + 2) + "|")
    for method in TABLE4:
        parts = []
        for i, part in enumerate(PARTITIONS):
            c = cell(method, part)
            paper = f" / {PAPER[method][i]}" if method in PAPER else ""
            parts.append("not run" if c is None else f"{fmt(c.global_, c.flatness)} ({c.flatness:+.1f}){paper}")
        c1 = cell(method)
        print(f"| {method} | " + " | ".join(parts) + f" | {'-' if c1 is None else fmt(c1.personal)} |")
    rounds = {p: sorted({int(cells.xs(p, level='partition')['rounds'].max())}) for p in PARTITIONS
              if p in cells.index.get_level_values("partition")}
    print(f"\nrounds: {rounds}")

    print(f"\n### BN strategies, classes-1: global / personalized / union accuracy % (last {w} rounds)\n")
    print("| method | strategy | global | personalized | union | flatness | s |\n|---|---|---|---|---|---|---|")
    for method in BN_TABLE:
        c = cell(method)
        if c is not None:
            print(f"| {method} | `{METHODS[method]['strategy']}` | {fmt(c.global_, c.flatness)} | "
                  f"{fmt(c.personal)} | {fmt(c.union)} | {c.flatness:+.1f} | {c.seconds:.0f} |")

    print(f"\n### classes-1, seeds {SEEDS}: mean ± std over seeds of each cell's figure\n")
    print("| method | global % | personalized % | max flatness |\n|---|---|---|---|")
    for method in SEED_METHODS:
        group = cells.loc[[k for k in cells.index
                           if k[0] == method and k[1] == "classes-1" and k[3] == 0.01 and k[4] == "fp32"]]
        if len(group):
            sd = lambda s: f" ± {s.std(ddof=1):.1f}" if len(s) > 1 else ""  # noqa: E731
            print(f"| {method} | {group.global_.mean():.1f}{sd(group.global_)} | "
                  f"{group.personal.mean():.1f}{sd(group.personal)} | {group.flatness.abs().max():.1f} |")

    print("\n### lr sweep, classes-1, seed 0: global accuracy % (flatness in brackets)\n")
    print("| method | " + " | ".join(f"lr {lr}" for lr in LRS) + " |\n" + "|---" * (len(LRS) + 1) + "|")
    for method in LR_METHODS:
        row = [cell(method, lr=lr) for lr in LRS]
        print(f"| {method} | " + " | ".join(
            "-" if c is None else f"{fmt(c.global_, c.flatness)} ({c.flatness:+.1f})" for c in row) + " |")

    print("\n### Precision, classes-2, seed 0: global accuracy % (flatness in brackets) and s of rounds\n")
    print("| method | fp32 | bf16 | bf16 − fp32 |\n|---|---|---|---|")
    for method in PRECISION_METHODS:
        fp32, bf16 = cell(method, "classes-2"), cell(method, "classes-2", precision="bf16")
        shown = ["-" if c is None else f"{fmt(c.global_, c.flatness)} ({c.flatness:+.1f}), {c.seconds:.0f} s"
                 for c in (fp32, bf16)]
        diff = "-" if fp32 is None or bf16 is None else f"{bf16.global_ - fp32.global_:+.1f}"
        print(f"| {method} | {shown[0]} | {shown[1]} | {diff} |")

    if "feature_norm" in data:
        feats = data[data["grid"].str.startswith("methods")].dropna(subset=["feature_norm"]).copy()
        feats = feats[feats["round"] > feats.groupby("cell")["round"].transform("max") - w]
        svs = feats[[f"sv{i}" for i in range(1, 6)]]
        feats["sv1_share"] = svs["sv1"] / svs.sum(axis=1)
        table = feats.groupby(["method", "partition"])[["feature_norm", "sv1_share"]].mean()
        print(f"\n### Feature diagnostics (last {w} rounds): mean penultimate-feature norm / top singular "
              "value's share of the top five\n")
        print("| method | " + " | ".join(PARTITIONS) + " |\n" + "|---" * (len(PARTITIONS) + 1) + "|")
        for method in TABLE4:
            parts = [f"{table.loc[(method, p)].feature_norm:.1f} / {table.loc[(method, p)].sv1_share:.2f}"
                     if (method, p) in table.index else "-" for p in PARTITIONS]
            print(f"| {method} | " + " | ".join(parts) + " |")
    total = data.groupby("cell")["elapsed"].max().sum() if "elapsed" in data else float("nan")
    print(f"\n{len(cells)} cells, {total:.0f} s of rounds in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-classes1", type=int, default=150, help="rounds under classes-1")
    parser.add_argument("--rounds", type=int, default=100, help="rounds under the other partitions")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every N rounds and at the last")
    parser.add_argument("--window", type=int, default=20, help="rounds averaged for a cell's figure")
    parser.add_argument("--out", default="runs/table4", help="the grids' run directories")
    parser.add_argument("--results", default="experiments/results/table4",
                        help="where each grid's results.csv and rounds.csv are kept")
    parser.add_argument("--grids", nargs="+", default=[g.name for g in GRIDS], choices=[g.name for g in GRIDS])
    parser.add_argument("--report-only", action="store_true", help="print the tables from --results; run nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    if not args.report_only:
        total, done = cell_counts(args)
        progress = Progress("table4", total, done=done, unit="cell")
        try:
            run_stoppable(lambda: run_grids(args, progress))
        finally:
            progress.close()
    report(args)
    if not args.report_only:
        print(f"{time.perf_counter() - start:.0f} s for this invocation")


if __name__ == "__main__":
    main()
