"""Run a grid of experiments: one run directory per cell, one combined results table.

Re-running a grid skips finished cells and continues an interrupted one from its last
checkpoint; a failed cell is recorded with its error and the grid goes on. Cells run one
after another in this process, or in ``parallel`` ``flnorm run`` subprocesses that split
the machine's CPUs between them. SIGINT and SIGTERM stop the grid (in parallel mode they
are passed on to every running cell, which checkpoints and exits).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flnorm.config import ExperimentConfig
from flnorm.errors import ConfigError, unknown_choice
from flnorm.runner.checkpoint import resumable
from flnorm.runner.progress import Progress
from flnorm.runner.rundir import METRICS_FILE, MODEL_FILE
from flnorm.runner.stopping import Stopped, stop_on_signals

log = logging.getLogger("flnorm")

RESULTS_FILE = "results.csv"
ROUNDS_FILE = "rounds.csv"
ERROR_FILE = "error.txt"
FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


@dataclass(frozen=True)
class Cell:
    """One point of the grid: the values of the varied fields and the full config."""

    values: tuple[tuple[str, Any], ...]
    cfg: ExperimentConfig

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values).replace("/", "_") or "base"

    def finished(self) -> bool:
        metrics = Path(self.cfg.out) / METRICS_FILE
        if not metrics.exists() or not (Path(self.cfg.out) / MODEL_FILE).exists():
            return False
        return len(pd.read_csv(metrics)) >= self.cfg.rounds


def _check_field(name: str) -> None:
    if name not in FIELDS or name == "out":
        raise unknown_choice("grid axis", name, tuple(f for f in FIELDS if f != "out"))


def grid_cells(
    base: ExperimentConfig,
    axes: Mapping[str, Sequence[Any]],
    out: str | Path,
    variants: Sequence[Mapping[str, Any]] = ({},),
) -> list[Cell]:
    """``variants`` (each a set of field values, e.g. a method = norm + strategy) crossed
    with the cartesian product of ``axes`` (config field -> values), over ``base``.

    Every cell is validated before anything runs.
    """
    for name, values in axes.items():
        _check_field(name)
        if isinstance(values, (str, bytes)) or not values:
            raise ConfigError(f"grid axis {name} needs a non-empty list of values, got {values!r}")
    for variant in variants:
        for name in variant:
            _check_field(name)
            if name in axes:
                raise ConfigError(f"{name} is both a grid axis and set by a variant")
    names = list(axes)
    cells = []
    for variant, combo in itertools.product(variants, itertools.product(*(axes[n] for n in names))):
        values = tuple(variant.items()) + tuple(zip(names, combo))
        cell = Cell(values, base)
        cells.append(Cell(values, base.replace(**dict(values), out=str(Path(out).resolve() / cell.name))))
    if len({c.name for c in cells}) != len(cells):
        raise ConfigError("grid axes repeat a value")
    return cells


def _cli_args(cfg: ExperimentConfig) -> list[str]:
    args = ["run"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def _run_in_process(cell: Cell) -> None:
    from flnorm.runner.simulation import run_experiment

    run_experiment(cell.cfg)


_children: set[subprocess.Popen] = set()  # the ``flnorm run`` processes of a parallel grid


def _run_subprocess(cell: Cell) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flnorm.cli", *_cli_args(cell.cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _children.add(proc)
    try:
        stdout, stderr = proc.communicate()
    finally:
        _children.discard(proc)
    Path(cell.cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cell.cfg.out) / "log.txt").write_text(stdout + stderr)
    if proc.returncode in (130, 143):
        raise RuntimeError(f"stopped by signal ({proc.returncode})")
    if proc.returncode != 0:
        reported = [ln for ln in stderr.splitlines() if ln.startswith("flnorm run:")]
        last = stderr.strip().splitlines()[-1:]
        raise RuntimeError((reported or last or [f"exit code {proc.returncode}"])[0])


def _attempt(cell: Cell, in_process: bool) -> tuple[str, str, float]:
    """Run one cell; return (status, error, seconds). Partial results of a failed try are replaced."""
    out = Path(cell.cfg.out)
    if cell.finished():
        return "done", "", 0.0
    if resumable(cell.cfg.out, cell.cfg):  # an interrupted earlier attempt: continue it
        cell = dataclasses.replace(cell, cfg=cell.cfg.replace(resume=True))
        (out / ERROR_FILE).unlink(missing_ok=True)
    elif out.exists():
        shutil.rmtree(out)  # a failed earlier attempt, or one that finished no round
    start = time.perf_counter()
    try:
        (_run_in_process if in_process else _run_subprocess)(cell)
    except Exception as exc:  # noqa: BLE001 - a failed cell must not stop the grid
        out.mkdir(parents=True, exist_ok=True)
        message = f"{type(exc).__name__}: {exc}"
        (out / ERROR_FILE).write_text(message + "\n")
        log.error("grid cell %s failed: %s", cell.name, message)
        return "failed", message, time.perf_counter() - start
    return "ran", "", time.perf_counter() - start


def _summary(cell: Cell, status: str, error: str) -> tuple[dict[str, Any], pd.DataFrame | None]:
    row: dict[str, Any] = {"cell": cell.name, **dict(cell.values), "status": "failed" if status == "failed" else "finished",
                           "error": error, "run_dir": cell.cfg.out}
    metrics_file = Path(cell.cfg.out) / METRICS_FILE
    if status == "failed" or not metrics_file.exists():
        return row, None
    metrics = pd.read_csv(metrics_file)
    last = metrics.iloc[-1]
    for col in ("test_accuracy", "personal_accuracy", "union_accuracy", "train_loss", "bn_eval"):
        if col in metrics:
            row[col] = last[col]
    row["best_test_accuracy"] = metrics["test_accuracy"].max()
    row["rounds"] = int(last["round"])
    row["seconds"] = float(metrics["seconds"].sum())
    curves = metrics.assign(**dict(cell.values), cell=cell.name)
    return row, curves


def _write(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def run_grid(
    base: ExperimentConfig | None = None,
    out: str | Path = "runs/grid",
    parallel: int = 1,
    variants: Sequence[Mapping[str, Any]] = ({},),
    **axes: Sequence[Any],
) -> pd.DataFrame:
    """Run every combination of ``axes`` over ``base``; return the results table.

    Parameters
    ----------
    base
        Settings shared by all cells (defaults to ``ExperimentConfig()``).
    out
        Grid directory: one sub-directory per cell, plus ``results.csv`` (one row per
        cell: the varied values, status, error, final metrics) and ``rounds.csv`` (every
        cell's ``metrics.csv`` with the varied values as columns).
    parallel
        Cells to run at once. 1 runs them in this process; more runs ``flnorm run``
        subprocesses, each given ``cpu_count // parallel`` CPUs for Ray. It pays only
        with cores to spare: on a 2-core machine two cells at once ran at 3.4 s per round
        each-equivalent against 2.3 s one after another.
    variants
        Sets of values that go together, e.g. ``[{"norm": "bn", "strategy": "fedbn"},
        {"norm": "ln", "strategy": "fedavg"}]``, crossed with ``axes``.
    **axes
        Config field -> list of values, e.g. ``partition=["classes-1"], seed=[0, 1]``.
    """
    base = base or ExperimentConfig()
    if parallel < 1:
        raise ConfigError(f"parallel must be >= 1, got {parallel}")
    if parallel > 1 and base.ray_cpus == 0:
        base = base.replace(ray_cpus=max(1, (os.cpu_count() or 1) // parallel))
    root = Path(out).resolve()
    cells = grid_cells(base, axes, root, variants)  # validated before anything is written
    root.mkdir(parents=True, exist_ok=True)
    finished = sum(c.finished() for c in cells)
    log.info("grid of %d cells in %s (%d finished already)", len(cells), root, finished)
    progress = Progress(f"grid {root.name}", len(cells), done=finished, unit="cell")
    outcomes: dict[str, tuple[str, str]] = {}

    def record(cell: Cell, status: str, error: str) -> None:
        outcomes[cell.name] = (status, error)
        done = [c for c in cells if c.name in outcomes]
        summaries = [_summary(c, *outcomes[c.name]) for c in done]
        _write(pd.DataFrame([s[0] for s in summaries]), root / RESULTS_FILE)
        curves = [s[1] for s in summaries if s[1] is not None]
        if curves:
            _write(pd.concat(curves, ignore_index=True), root / ROUNDS_FILE)
        if status != "done":  # cells finished before are counted from the start
            progress.step(f"{cell.name}: {status}")

    try:
        with stop_on_signals():
            _run_cells(cells, parallel, record)
    finally:
        progress.close()
    results = pd.read_csv(root / RESULTS_FILE, converters={"error": str})  # "" where no error, not NaN
    results.attrs["grid_dir"] = str(root)
    return results


def _run_cells(cells: list[Cell], parallel: int, record: Callable[[Cell, str, str], None]) -> None:
    if parallel == 1:
        from flnorm.runner.ray_backend import keep_ray

        with keep_ray():  # one Ray and one set of actors for all cells (flnorm.runner.ray_backend)
            for cell in cells:
                status, error, _ = _attempt(cell, in_process=True)
                record(cell, status, error)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {cell.name: pool.submit(_attempt, cell, False) for cell in cells}
            try:
                for cell in cells:
                    status, error, _ = futures[cell.name].result()
                    record(cell, status, error)
            except Stopped as stop:  # pass the signal on; each child checkpoints and exits
                for future in futures.values():
                    future.cancel()
                for child in list(_children):
                    child.send_signal(stop.signum)
                raise
