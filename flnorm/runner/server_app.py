"""flnorm's Flower ServerApp.

``app`` reads the experiment from ``context.run_config`` (``flwr run .`` with the keys
of ``[tool.flwr.app.config]``, overridable by ``--run-config``); ``make_server_app(cfg)``
binds a config directly, for in-process simulations.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from flnorm.config import ExperimentConfig
from flnorm.device import resolve_device
from flnorm.records import array_record, numpy_state, torch_state
from flnorm.runner import engine
from flnorm.runner.checkpoint import (
    Checkpoint, discard_partial_write, restore_strategy_state, resume_point, save_checkpoint, strategy_state,
)
from flnorm.runner.monitor import ReplyLog
from flnorm.runner.progress import Progress, ensure_logging
from flnorm.runner.recorder import RoundRecorder
from flnorm.runner.rundir import RunDirectory, default_run_dir
from flnorm.task import new_model
from strategies import build_strategy

log = logging.getLogger("flnorm")
NODE_POLL = 0.1  # seconds between checks of the connected nodes before round 1
SIMULATED_NODES_SETTLE = 1.0  # seconds a simulation's node count must hold to be final
REPLY_POLL = 0.2  # seconds between pulls for replies from a deployed SuperLink (Flower waits 3 s)


def run_server(grid: Grid, cfg: ExperimentConfig) -> Path:
    """Run rounds ``1..cfg.rounds`` of ``cfg.strategy`` on ``grid``; return the run directory.

    With ``cfg.resume`` the run continues in ``cfg.out`` after its last checkpointed round.
    """
    ensure_logging()
    rundir = RunDirectory(cfg.out or default_run_dir(cfg), resume=cfg.resume)
    model = new_model(cfg)
    strategy = build_strategy(cfg)
    arrays = ArrayRecord(model.state_dict())
    first_round = 1
    if cfg.resume:
        ckpt = _resume_point(rundir, cfg)
        arrays = array_record(ckpt.arrays)
        restore_strategy_state(strategy, ckpt.strategy_state)
        first_round = ckpt.round + 1
        log.info("flnorm run %s resumed after round %d -> %s", cfg.run_name, ckpt.round, rundir.path)
    else:
        log.info("flnorm run %s -> %s", cfg.run_name, rundir.path)
        rundir.write_config(
            cfg,
            norm=cfg.norm_spec.name,
            partition=cfg.partition_spec.name,
            server_device=str(resolve_device(cfg.device)),
            engine="flnorm" if engine.active() else "flower",
            agc_clip=cfg.agc_lambda,
            parameters=sum(p.numel() for p in model.parameters()),
            run_dir=str(rundir.path),
        )
    wait_for_nodes(grid, cfg.clients, cfg.node_timeout)
    replies = ReplyLog(grid, experiment=ConfigRecord(cfg.client_record()),
                       poll=None if _simulated(grid) else REPLY_POLL)
    progress = Progress(cfg.run_name, cfg.rounds, done=first_round - 1)
    try:
        recorder = RoundRecorder(cfg, rundir, replies, progress)
        arrays = run_rounds(strategy, replies, arrays, cfg, recorder, first_round, rundir.path)
    finally:
        progress.close()
    rundir.save_model(torch_state(arrays))
    log.info("flnorm run finished: results in %s", rundir.path)
    return rundir.path


def run_rounds(
    strategy: Strategy, grid: ReplyLog, arrays: ArrayRecord, cfg: ExperimentConfig,
    recorder: RoundRecorder, first_round: int, run_dir: Path,
) -> ArrayRecord:
    """Flower's ``Strategy.start`` loop, from ``first_round``, checkpointing every round.

    Each round: ``configure_train`` -> send/receive -> ``aggregate_train`` (``None`` keeps
    the model), ``configure_evaluate`` -> send/receive -> ``aggregate_evaluate``, the
    server-side evaluation, then ``checkpoint.pt``. Replies not back within
    ``cfg.round_timeout`` seconds count as failures. The strategy starts every round's
    instructions from an empty record; the experiment travels apart (``grid`` attaches it).
    """
    if first_round == 1:
        recorder(0, arrays)
    else:
        recorder.resume()
    for rnd in range(first_round, cfg.rounds + 1):
        train = grid.send_and_receive(
            strategy.configure_train(rnd, arrays, ConfigRecord(), grid), timeout=cfg.round_timeout
        )
        aggregated, _ = strategy.aggregate_train(rnd, train)
        if aggregated is not None:
            arrays = aggregated
        evaluation = grid.send_and_receive(
            strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid), timeout=cfg.round_timeout
        )
        strategy.aggregate_evaluate(rnd, evaluation)
        recorder(rnd, arrays)
        save_checkpoint(run_dir, Checkpoint(rnd, numpy_state(arrays), strategy_state(strategy)))
    return arrays


def _resume_point(rundir: RunDirectory, cfg: ExperimentConfig) -> Checkpoint:
    """The checkpoint to continue from (``resume_point``); later CSV rows are dropped, and
    a checkpoint write cut short (its ``.tmp`` file) is removed."""
    ckpt = resume_point(rundir.path, cfg)
    rundir.truncate(ckpt.round)
    discard_partial_write(rundir.path)
    return ckpt


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> None:
    """Wait until exactly ``expected`` nodes are connected, or fail with what to change.

    In a simulation every node registers at start-up, so a count that holds for
    ``SIMULATED_NODES_SETTLE`` seconds is final and a mismatch fails at once; deployed
    SuperNodes may connect later, so they get ``timeout`` seconds.
    """
    start = time.monotonic()
    simulated = _simulated(grid)
    next_log, last, since = 0.0, -1, start
    while True:
        connected = len(list(grid.get_node_ids()))
        now = time.monotonic()
        if connected != last:
            last, since = connected, now
        if connected > expected:
            raise RuntimeError(
                f"{connected} nodes are connected but the run has clients={expected}; "
                f"every node holds one partition: set clients={connected} or start {expected} nodes"
            )
        if connected == expected:
            return
        settled = simulated and connected > 0 and now - since >= SIMULATED_NODES_SETTLE
        if settled or now - start > timeout:
            raise RuntimeError(
                f"only {connected} of clients={expected} nodes connected"
                f"{' (the simulation has no more)' if settled else f' within {timeout:g} s'}; "
                f"start more SuperNodes (flwr run: --federation-config num-supernodes={expected}) "
                f"or set clients={connected}"
            )
        if now >= next_log:
            log.info("waiting for nodes: %d of %d connected", connected, expected)
            next_log = now + 10
        time.sleep(NODE_POLL)


def _simulated(grid: Grid) -> bool:
    """Whether ``grid`` is a simulation's in-memory grid (its module is loaded only then)."""
    module = sys.modules.get("flwr.superlink.grid")
    return module is not None and isinstance(grid, module.InMemoryGrid)


def make_server_app(
    cfg: ExperimentConfig, running: threading.Event | None = None, ended: threading.Event | None = None
) -> ServerApp:
    """A ServerApp bound to ``cfg`` (its ``context.run_config`` is ignored). ``running`` is set
    when it starts, ``ended`` when it returns or fails (Flower runs it in a thread of its own)."""
    bound = ServerApp()

    @bound.main()
    def main(grid: Grid, context: Context) -> None:
        if running is not None:
            running.set()
        try:
            run_server(grid, cfg)
        finally:
            if ended is not None:
                ended.set()

    return bound


app = ServerApp()
engine.adopt_in_flower_simulation()  # under `flwr run`; see flnorm.runner.engine


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the experiment comes from the run config."""
    run_server(grid, ExperimentConfig.from_flat(context.run_config))
