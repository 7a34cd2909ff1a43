"""flnorm's Flower ServerApp.

``app`` reads the experiment from ``context.run_config`` (``flwr run .`` with the keys
of ``[tool.flwr.app.config]``, overridable by ``--run-config``); ``make_server_app(cfg)``
binds a config directly, for in-process simulations.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from flnorm.config import ExperimentConfig
from flnorm.device import resolve_device
from flnorm.runner.monitor import ReplyLog
from flnorm.runner.recorder import RoundRecorder
from flnorm.runner.rundir import RunDirectory, default_run_dir
from flnorm.task import new_model
from strategies import build_strategy

log = logging.getLogger("flnorm")
# Seconds between reply polls of the simulation's in-memory grid: Flower's default 0.1 s
# adds up to 0.1 s of latency per phase; 0.005 s measurably takes CPU from the clients.
PULL_INTERVAL = 0.02


def run_server(grid: Grid, cfg: ExperimentConfig) -> Path:
    """Run ``cfg.rounds`` rounds of ``cfg.strategy`` on ``grid``; return the run directory."""
    _ensure_logging()
    rundir = RunDirectory(cfg.out or default_run_dir(cfg))
    log.info("flnorm run %s -> %s", cfg.run_name, rundir.path)
    model = new_model(cfg)
    rundir.write_config(
        cfg,
        norm=cfg.norm_spec.name,
        partition=cfg.partition_spec.name,
        server_device=str(resolve_device(cfg.device)),
        parameters=sum(p.numel() for p in model.parameters()),
        run_dir=str(rundir.path),
    )
    wait_for_nodes(grid, cfg.clients, cfg.node_timeout)
    if hasattr(grid, "pull_interval"):  # the in-process simulation grid polls for replies
        grid.pull_interval = PULL_INTERVAL
    replies = ReplyLog(grid)
    recorder = RoundRecorder(cfg, rundir, replies)
    strategy = build_strategy(cfg)
    experiment = ConfigRecord(cfg.to_flat())
    result = strategy.start(
        grid=replies,  # type: ignore[arg-type] - a Grid proxy
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.rounds,
        train_config=experiment,
        evaluate_config=ConfigRecord(cfg.to_flat()),
        evaluate_fn=recorder,
    )
    state = result.arrays.to_torch_state_dict() if len(result.arrays) else model.state_dict()
    rundir.save_model({k: torch.as_tensor(v) for k, v in state.items()})
    log.info("flnorm run finished: results in %s", rundir.path)
    return rundir.path


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> None:
    """Wait until exactly ``expected`` nodes are connected, or fail with what to change."""
    deadline = time.monotonic() + timeout
    next_log = 0.0
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected > expected:
            raise RuntimeError(
                f"{connected} nodes are connected but the run has clients={expected}; "
                f"every node holds one partition: set clients={connected} or start {expected} nodes"
            )
        if connected == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {connected} of clients={expected} nodes connected within {timeout:g} s; "
                f"start more SuperNodes (flwr run: --federation-config num-supernodes={expected}) "
                f"or set clients={connected}"
            )
        if time.monotonic() >= next_log:
            log.info("waiting for nodes: %d of %d connected", connected, expected)
            next_log = time.monotonic() + 10
        time.sleep(0.5)


def _ensure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s flnorm: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def make_server_app(cfg: ExperimentConfig) -> ServerApp:
    """A ServerApp bound to ``cfg`` (its ``context.run_config`` is ignored)."""
    bound = ServerApp()

    @bound.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg)

    return bound


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the experiment comes from the run config."""
    run_server(grid, ExperimentConfig.from_flat(context.run_config))
