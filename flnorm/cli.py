"""``flnorm`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from flnorm.config import ExperimentConfig
from flnorm.errors import ConfigError
from flnorm.runner.stopping import Stopped, finish_stopped, stop_on_signals

FIELDS = frozenset(f.name for f in dataclasses.fields(ExperimentConfig))
GROUP_TITLES = {
    "experiment": "the experiment (what defines the science)",
    "strategy": "strategy parameters (stay on the server; clients get the strategy's instructions)",
    "execution": "execution (devices, resources, paths, timeouts; a resumed run may change them)",
}


def _config_options(parser: argparse.ArgumentParser, multi: bool) -> None:
    """One option per ExperimentConfig field, grouped; with ``multi`` each takes several values."""
    defaults = ExperimentConfig()
    groups = {name: parser.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    for f in dataclasses.fields(ExperimentConfig):
        if multi and f.name == "out":
            continue
        p = groups[f.metadata["group"]]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = {"int": int, "float": float, "str": str, "bool": _boolean}[f.type]
        text = f.metadata["help"]
        if multi:
            p.add_argument(flag, type=kind, nargs="+", default=None, metavar=f.name.upper(),
                           help=f"{text} (default: {default!r})")
        elif f.type == "bool":  # None: not given on the command line
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{text} (default: {str(default).lower()})")
        else:
            p.add_argument(flag, type=kind, default=None, help=f"{text} (default: {default!r})")


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flnorm", description="Federated normalization experiments on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated simulation",
                         description="Run one experiment as a Flower simulation on the Ray backend.")
    _config_options(run, multi=False)
    grid = sub.add_parser("grid", help="run a grid of simulations (resumable)",
                          description="Run every combination of the given values, one run directory per "
                          "cell, results.csv and rounds.csv in --out. Finished cells are skipped.")
    _config_options(grid, multi=True)
    grid.add_argument("--out", default="runs/grid", help="grid directory (default: runs/grid)")
    grid.add_argument("--parallel", type=int, default=1, help="cells at once (default: 1)")
    plot = sub.add_parser("plot", help="plot runs or grids into PNG files, or a dataset's images")
    plot.add_argument("runs", nargs="*", help="run directories or grid directories")
    plot.add_argument("--out", default="plots", help="directory for the PNGs (default: plots)")
    plot.add_argument("--samples", metavar="DATASET", help="also draw a grid of DATASET's training images, "
                      "one row per domain (e.g. digits)")
    plot.add_argument("--data-dir", default="data", help="where --samples finds the dataset (default: data)")
    from flnorm import deploy_cli

    deploy_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from flnorm import deploy_cli

    command = {"run": _run, "grid": _grid, "plot": _plot, "deploy": deploy_cli.run}[args.command]
    if args.command not in ("run", "grid"):
        return command(parser, args)
    with stop_on_signals():
        try:
            return command(parser, args)
        except Stopped as stop:  # before the run started: nothing to resume
            print(f"flnorm {args.command}: {stop}", file=sys.stderr)
            return finish_stopped(stop.exit_code)


def _resume_hint(cfg: ExperimentConfig) -> str:
    """What a stopped run left: its last complete round and the command that continues it."""
    from flnorm.runner.checkpoint import resume_point

    try:
        done = resume_point(cfg.out, cfg).round
    except ConfigError as exc:
        return f"it cannot be resumed: {exc}"
    return f"round {done} is complete and checkpointed; continue with: flnorm run --resume --out {cfg.out}"


def _grid(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "out", "parallel") and v is not None}
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1}
    axes = {k: v for k, v in values.items() if len(v) > 1}
    try:
        from flnorm.runner.grid import run_grid

        results = run_grid(ExperimentConfig(**fixed), out=args.out, parallel=args.parallel, **axes)
    except ConfigError as exc:
        parser.exit(2, f"flnorm grid: error: {exc}\n")
    shown = [c for c in results.columns if c not in ("run_dir", "error")]
    print(results[shown].to_string(index=False))
    print(f"results: {results.attrs['grid_dir']}")
    failed = int((results["status"] == "failed").sum())
    if failed:
        print(f"flnorm grid: {failed} cell(s) failed; see the error column", file=sys.stderr)
    return 1 if failed else 0


def _plot(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from flnorm.data.datasets import check_dataset_name
    from flnorm.plots import plot_runs, plot_samples

    if not args.runs and not args.samples:
        parser.exit(2, "flnorm plot: error: give run or grid directories, or --samples DATASET\n")
    try:
        written = plot_runs(args.runs, args.out) if args.runs else []
        if args.samples:
            check_dataset_name(args.samples)
            written.append(plot_samples(args.samples, args.out, args.data_dir))
    except (FileNotFoundError, ConfigError) as exc:
        parser.exit(2, f"flnorm plot: error: {exc}\n")
    for path in written:
        print(path)
    return 0


def _saved_config(out: str) -> dict[str, object]:
    """The config of the run in ``out`` (underscored keys), for ``--resume``."""
    from flnorm.runner.rundir import CONFIG_FILE

    path = Path(out) / CONFIG_FILE
    if not out or not path.exists():
        raise ConfigError(f"--resume needs --out naming a run directory; {path} does not exist")
    saved = json.loads(path.read_text())["config"]
    return {k.replace("-", "_"): v for k, v in saved.items() if k.replace("-", "_") in FIELDS}


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        if given.get("resume"):  # the saved config, with the flags given on this command line on top
            given = {**_saved_config(given.get("out", "")), **given}
        cfg = ExperimentConfig(**given)
        from flnorm.runner.simulation import prepare, run_prepared

        cfg = prepare(cfg)
    except ConfigError as exc:
        parser.exit(2, f"flnorm run: error: {exc}\n")
    except RuntimeError as exc:  # e.g. a dataset that cannot be loaded
        parser.exit(1, f"flnorm run: failed: {exc}\n")
    try:
        metrics = run_prepared(cfg)
    except Stopped as stop:
        print(f"flnorm run: {stop}; {_resume_hint(cfg)}", file=sys.stderr)
        return finish_stopped(stop.exit_code)
    except ConfigError as exc:  # found on joining a Ray cluster: nothing was written
        parser.exit(2, f"flnorm run: error: {exc}\n")
    except Exception as exc:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"flnorm run: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"flnorm run: partial results (if any) are in {cfg.out}", file=sys.stderr)
        return 1
    last = metrics.iloc[-1]
    print(
        f"\nflnorm: {cfg.run_name}: round {int(last['round'])}: test_accuracy {last['test_accuracy']:.4f} "
        f"(mean over clients), union_accuracy {last['union_accuracy']:.4f}, "
        f"{metrics['seconds'].sum():.1f} s\nresults: {cfg.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
