"""Per-round checkpoints: what a resumed run needs to continue exactly.

After every round the server writes ``checkpoint.pt`` into the run directory, atomically
(a temporary file, then ``os.replace``): a crash leaves the previous round's checkpoint
whole. It holds the round number, the global state and the strategy's own state across
rounds (FedAdam/FedYogi moments: the attributes a strategy lists in
``checkpoint_attrs``). Client training is seeded by (seed, round, client), so rounds run
after a resume repeat those of an uninterrupted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
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


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint) -> None:
    """Write ``checkpoint.pt`` atomically."""
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    body = {
        "round": ckpt.round,
        "arrays": _tensors(ckpt.arrays),
        "strategy_state": {n: _tensors(s) for n, s in ckpt.strategy_state.items()},
    }
    torch.save(body, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``checkpoint.pt`` of ``run_dir``; a clear error if there is none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run finished no round, start it afresh")
    body = torch.load(path, weights_only=True)
    return Checkpoint(
        round=int(body["round"]),
        arrays=_arrays(body["arrays"]),
        strategy_state={n: _arrays(s) for n, s in body["strategy_state"].items()},
    )
