"""Per-round checkpoints: what a resumed run needs to continue exactly.

After every round the server writes ``checkpoint.pt`` into the run directory, atomically
(a temporary file, then ``os.replace``): a crash leaves the previous round's checkpoint
whole. It holds the round number, the global state and the strategy's own state across
rounds (FedAdam/FedYogi moments: the attributes a strategy lists in
``checkpoint_attrs``). Client training is seeded by (seed, round, client), so rounds run
after a resume repeat those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flnorm.config import ExperimentConfig
from flnorm.errors import ConfigError

log = logging.getLogger("flnorm")

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"  # the round before: the fallback if the last write was cut
NumpyState = dict[str, np.ndarray]


@dataclass(frozen=True)
class Checkpoint:
    """The server's state at the end of round ``round``."""

    round: int
    arrays: NumpyState
    strategy_state: dict[str, NumpyState] = field(default_factory=dict)


def strategy_state(strategy: object) -> dict[str, NumpyState]:
    """The strategy's cross-round attributes named in its ``checkpoint_attrs``."""
    names = getattr(strategy, "checkpoint_attrs", ())
    return {n: dict(getattr(strategy, n)) for n in names if getattr(strategy, n, None) is not None}


def restore_strategy_state(strategy: object, state: dict[str, NumpyState]) -> None:
    for name, value in state.items():
        setattr(strategy, name, dict(value))


def _tensors(state: NumpyState) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


def _arrays(state: dict[str, torch.Tensor]) -> NumpyState:
    return {k: v.numpy() for k, v in state.items()}


class CheckpointError(ConfigError):
    """A checkpoint file cannot be read; the message names it."""


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint) -> None:
    """Write ``checkpoint.pt`` atomically; the one it replaces becomes ``checkpoint.prev.pt``."""
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = partial_write(run_dir)
    body = {
        "round": ckpt.round,
        "arrays": _tensors(ckpt.arrays),
        "strategy_state": {n: _tensors(s) for n, s in ckpt.strategy_state.items()},
    }
    torch.save(body, tmp)
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS_FILE))
    os.replace(tmp, path)


def partial_write(run_dir: str | Path) -> Path:
    """Where ``save_checkpoint`` writes before the atomic rename."""
    return Path(run_dir) / (CHECKPOINT_FILE + ".tmp")


def discard_partial_write(run_dir: str | Path) -> None:
    """Remove a checkpoint write that a killed process left unfinished."""
    partial_write(run_dir).unlink(missing_ok=True)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint file; ``CheckpointError`` naming it if it is missing or corrupt."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        body = torch.load(path, weights_only=True)
        return Checkpoint(
            round=int(body["round"]),
            arrays=_arrays(body["arrays"]),
            strategy_state={n: _arrays(s) for n, s in body["strategy_state"].items()},
        )
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        # torch's own message for a damaged file suggests weights_only=False: never do that here
        raise CheckpointError(f"{path} is corrupt or truncated ({type(exc).__name__} while reading it)") from None


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The run's last readable checkpoint: ``checkpoint.pt``, or the round before it
    (``checkpoint.prev.pt``, with a warning) when the last one is damaged."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.exists() and not (run_dir / PREVIOUS_FILE).exists():
        raise CheckpointError(f"{path} does not exist: the run finished no round; start it afresh")
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        try:
            previous = read_checkpoint(run_dir / PREVIOUS_FILE)
        except CheckpointError:
            raise CheckpointError(f"{exc}; no earlier checkpoint to fall back to: start the run afresh") from None
        log.warning("%s; falling back to %s (round %d)", exc, PREVIOUS_FILE, previous.round)
        return previous


def resumable(run_dir: str | Path, cfg: ExperimentConfig) -> bool:
    """Whether ``run_dir`` holds an interrupted run of ``cfg`` that ``resume`` can continue."""
    try:
        resume_point(run_dir, cfg)
    except ConfigError:
        return False
    return True


def resume_point(run_dir: str | Path, cfg: ExperimentConfig) -> Checkpoint:
    """The checkpoint a resumed ``cfg`` continues from, after every check a resume needs.

    Raises ``ConfigError`` (before anything starts) when the directory holds no run, the
    run was another experiment (execution settings may change), its BN state lived on the
    clients, its checkpoint is unreadable, or it finished all its rounds.
    """
    from flnorm.runner.rundir import CONFIG_FILE

    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise ConfigError(f"cannot resume {run_dir}: it holds no run (no {CONFIG_FILE})")
    saved = ExperimentConfig.from_flat(json.loads(config_file.read_text())["config"])
    differ = cfg.differs_from(saved)
    if differ:
        raise ConfigError(f"cannot resume {run_dir}: the run was made with other {', '.join(differ)}")
    if cfg.contract.bn_local:
        raise ConfigError(f"cannot resume a {cfg.strategy} run: its BN state lives on the clients and does "
                          "not survive into a new run")
    ckpt = load_checkpoint(run_dir)
    if ckpt.round >= cfg.rounds:
        raise ConfigError(f"{run_dir} finished all {cfg.rounds} rounds; nothing to resume")
    return ckpt
