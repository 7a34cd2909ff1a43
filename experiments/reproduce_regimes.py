"""Normalization under both regimes on one dataset: IID, label shift and feature shift.

    .venv/bin/python experiments/reproduce_regimes.py              # runs what is missing, prints the tables
    .venv/bin/python experiments/reproduce_regimes.py --report-only

Every method of the label-shift tables plus FedWon (``--norm ws``) and the local-only
baseline (``--strategy local``, FedBN's SingleSet), on the embedded multi-domain digits
(``--dataset digits``: MNIST, optdigits, MNIST-M-style, SynthDigits-style), under

- ``iid``: every client a uniform share of all four domains;
- ``classes-2``: label shift, two classes per client, domains mixed;
- ``domains``: feature shift, every client one domain (client i holds domain i mod 4).

``--clients`` (default 20) is a multiple of four, so under ``domains`` each domain has
``clients / 4`` clients and each holds that share of it: with 20, a fifth (400 training
images of MNIST, MNIST-M and Synth, 287-288 of optdigits), where FedBN's protocol gives a
tenth. Three seeds under feature shift, one elsewhere; local training as the label-shift
tables (E = 10 steps of batch 32, plain SGD lr 0.01, bias-free CNN).

Each cell's per-round metrics are kept as one CSV under ``--results`` (kept in git); a
re-run skips kept cells and continues a cell cut short from its checkpoint. Figures are
means over the last ``--window`` evaluated rounds, with the flatness rule of
``reproduce_table4.py`` (``*``: moved more than 1 point against the window before).

Cells run until flat: one kept at ``--rounds`` that is not flat runs again from the start
at twice its rounds, up to ``--max-rounds``; what is still not flat there keeps its ``*``.
A cell restarts rather than continues because its rounds are part of the experiment
(FixBN freezes its statistics at half of them, and FedBN's and SiloBN's client state is
not checkpointed); its kept CSV is replaced only when the longer run has finished.
*Global* is the global model on each client's test split (mean over clients; ``-`` for the
local-only baseline, whose server model is never trained), *personal*
each client's own model state (its BN; the whole model under ``local``): the protocol of
FedBN's paper under feature shift, and no evidence of learning under label shift.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd
from reproduce_table4 import METHODS as LABEL_SHIFT_METHODS
from reproduce_table4 import NOT_FLAT, fmt, kept, method_of, run_cell, run_stoppable, settle

from flnorm import ExperimentConfig
from flnorm.data.digits import DOMAINS
from flnorm.runner.progress import Progress

METHODS = {
    **LABEL_SHIFT_METHODS,
    "FedWon": {"norm": "ws", "strategy": "fedavg"},
    "Local only": {"norm": "bn", "strategy": "local"},
}
ORDER = ["Local only", "FedAvg", "FedAvg+BN", "FedBN", "SiloBN", "FixBN", "PreciseBN", "BN pooled",
         "FedGN", "FedLN", "FedFN", "FedWon"]
REGIMES = {"iid": "iid", "label shift": "classes-2", "feature shift": "domains"}
SEEDS = {"iid": [0], "classes-2": [0], "domains": [0, 1, 2]}
KEYS = ["method", "partition", "seed"]
# Methods whose server model is never trained (nothing crosses the wire): no global figure.
NO_GLOBAL_MODEL = {"Local only"}


def cells(methods: list[str], partitions: list[str]) -> list[tuple[str, dict]]:
    """``(name, config changes)`` of every cell, in the order they run.

    Feature shift comes first, one seed of every method at a time (the regime the
    published claims are about, comparable after its first seed), then the other regimes.
    """
    out = []
    for method, partition in itertools.product(methods, partitions):
        for seed in SEEDS[partition]:
            name = f"{method.replace(' ', '-').replace('+', '-')},partition={partition},seed={seed}"
            out.append((name, {**METHODS[method], "partition": partition, "seed": seed}))
    return sorted(out, key=lambda cell: (cell[1]["partition"] != "domains", cell[1]["seed"]))


def settle_cells(data: pd.DataFrame, window: int) -> pd.DataFrame:
    """``settle`` per cell, with each cell's ``method``; the flatness of a method without a
    global model is that of its personalized accuracy (its only figure)."""
    settled = settle(data, window, KEYS)
    no_global = settled["method"].isin(NO_GLOBAL_MODEL)
    settled.loc[no_global, "flatness"] = settled.loc[no_global, "personal_flatness"]
    return settled


def due(path: Path, args: argparse.Namespace) -> tuple[int, str] | None:
    """``(rounds, why)`` if the cell kept as ``path`` must run (again), else ``None``.

    Not kept: ``--rounds``. Kept but not flat at fewer than ``--max-rounds``: twice its
    rounds, at most ``--max-rounds``.
    """
    if not kept(path, args.rounds):
        return args.rounds, "not kept"
    curve = pd.read_csv(path).dropna(subset=["test_accuracy"])
    curve["method"] = [method_of(r, METHODS) for r in curve.itertuples()]
    cell = settle_cells(curve, args.window).iloc[0]
    if abs(cell.flatness) <= NOT_FLAT or cell.rounds >= args.max_rounds:
        return None
    rounds = min(2 * int(cell.rounds), args.max_rounds)
    return rounds, f"not flat at {cell.rounds} rounds ({cell.flatness:+.1f} points): again at {rounds}"


def run(args: argparse.Namespace) -> None:
    """Run every cell not yet kept under ``--results``, and again every kept one not yet flat."""
    base = ExperimentConfig(
        dataset="digits", clients=args.clients, rounds=args.rounds, local_steps=10, batch_size=32, lr=0.01,
        bias=False, precise_passes=0, eval_every=args.eval_every,
    )
    todo = cells(args.methods, [REGIMES[r] for r in args.regimes])
    keep = Path(args.results)
    keep.mkdir(parents=True, exist_ok=True)
    progress = Progress("regimes", len(todo), done=sum(due(keep / f"{n}.csv", args) is None for n, _ in todo),
                        unit="cell")
    try:
        for name, changes in todo:
            path = keep / f"{name}.csv"
            while (job := due(path, args)) is not None:
                rounds, why = job
                progress.note(f"{name}: {why}")
                cfg = base.replace(out=str(Path(args.out) / name), rounds=rounds, **changes)
                run_cell(cfg, path, progress, name, cell=name, **changes)
                if not kept(path, rounds):  # failed (reported by run_cell): on to the next cell
                    break
    finally:
        progress.close()


def report(args: argparse.Namespace) -> None:
    frames = [pd.read_csv(p) for p in sorted(Path(args.results).glob("*.csv"))]
    if not frames:
        raise SystemExit(f"no results under {args.results}: run without --report-only first")
    data = pd.concat(frames, ignore_index=True).dropna(subset=["test_accuracy"])
    data["method"] = [method_of(r, METHODS) for r in data.itertuples()]
    settled = settle_cells(data, args.window)
    per_method = settled.groupby(["method", "partition"])
    table = per_method[["global_", "personal"]].mean()
    spread = per_method[["global_", "personal"]].std(ddof=1)
    flat = per_method["flatness"].apply(lambda f: f.abs().max())
    seeds = per_method.size()

    def show(method: str, partition: str, column: str) -> str:
        if (method, partition) not in table.index or (column == "global_" and method in NO_GLOBAL_MODEL):
            return "-"
        value = fmt(table.loc[(method, partition), column], flat.loc[(method, partition)])
        sd = spread.loc[(method, partition), column]
        return value + (f" ± {sd:.1f}" if seeds.loc[(method, partition)] > 1 else "")

    w = args.window
    print(f"\n### Digits (4 domains), {args.clients} clients: accuracy % (mean of the last {w} rounds' evaluations; "
          "mean ± std over seeds under feature shift; * = moved > 1 point), global / personalized\n")
    print("| method | " + " | ".join(f"{r} (`{p}`)" for r, p in REGIMES.items()) + " |")
    print("|---" * (len(REGIMES) + 1) + "|")
    for method in [m for m in ORDER if m in set(settled["method"])]:
        parts = [f"{show(method, p, 'global_')} / {show(method, p, 'personal')}" for p in REGIMES.values()]
        print(f"| {method} | " + " | ".join(parts) + " |")

    domains = settled[settled["partition"] == "domains"].groupby("method")
    if len(domains):
        print("\n### Feature shift (`domains`): accuracy % per domain, global / personalized (mean over seeds)\n")
        print("| method | " + " | ".join(DOMAINS) + " | mean |\n" + "|---" * (len(DOMAINS) + 2) + "|")
        for method in [m for m in ORDER if m in domains.groups]:
            g = domains.get_group(method)
            glob = [("-" if method in NO_GLOBAL_MODEL else f"{g[c].mean():.1f}")
                    for c in [*(f"test_accuracy_{d}" for d in DOMAINS), "global_"]]
            pers = [f"{g[c].mean():.1f}" for c in [*(f"personal_accuracy_{d}" for d in DOMAINS), "personal"]]
            print(f"| {method} | " + " | ".join(f"{a} / {b}" for a, b in zip(glob, pers, strict=True)) + " |")
        seeds_run = SEEDS["domains"]
        print("\n### Feature shift (`domains`): mean over the domains, seed by seed, global / personalized\n")
        print("| method | " + " | ".join(f"seed {s}" for s in seeds_run) + " |\n" + "|---" * (len(seeds_run) + 1) + "|")
        for method in [m for m in ORDER if m in domains.groups]:
            by_seed = domains.get_group(method).set_index("seed")

            def figure(seed: int, column: str) -> str:
                if seed not in by_seed.index or (column == "global_" and method in NO_GLOBAL_MODEL):
                    return "-"
                return fmt(by_seed.loc[seed, column], by_seed.loc[seed, "flatness"])

            parts = [f"{figure(s, 'global_')} / {figure(s, 'personal')}" for s in seeds_run]
            print(f"| {method} | " + " | ".join(parts) + " |")
    print(f"\n{len(settled)} cells, {settled['seconds'].sum():.0f} s of rounds in all; rounds per cell:")
    for rounds, group in settled.groupby("rounds"):
        names = group.groupby(["method", "partition"])["seed"].apply(lambda s: ",".join(map(str, sorted(s))))
        print(f"- {rounds}: {len(group)} cells" + ("" if rounds == args.rounds else ": " + "; ".join(
            f"{m} {p} (seed {s})" for (m, p), s in names.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="clients (a multiple of 4: the digits domains)")
    parser.add_argument("--rounds", type=int, default=100, help="rounds per cell")
    parser.add_argument("--max-rounds", type=int, default=200,
                        help="a cell not flat at fewer rounds runs again at twice its rounds, up to this many")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every N rounds and at the last")
    parser.add_argument("--window", type=int, default=20, help="rounds averaged for a cell's figure")
    parser.add_argument("--methods", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--out", default="runs/regimes", help="the cells' run directories")
    parser.add_argument("--results", default="experiments/results/regimes", help="where each cell's CSV is kept")
    parser.add_argument("--report-only", action="store_true", help="print the tables from --results; run nothing")
    args = parser.parse_args()
    if args.clients % len(DOMAINS):
        parser.error(f"--clients must be a multiple of {len(DOMAINS)} (one share of a domain per client)")
    if args.max_rounds < args.rounds:
        parser.error(f"--max-rounds ({args.max_rounds}) must be at least --rounds ({args.rounds})")
    start = time.perf_counter()
    if not args.report_only:
        run_stoppable(lambda: run(args))
    report(args)
    if not args.report_only:
        print(f"{time.perf_counter() - start:.0f} s for this invocation")


if __name__ == "__main__":
    main()
