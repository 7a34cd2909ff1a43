"""``fixbn``: train normally, then freeze the global BN statistics.

FixBN (Zhong et al., 2023). For the first ``freeze_after`` rounds this is
``fedavg-pooled``; afterwards clients train with every BN layer normalizing by the frozen
global statistics (and leaving them unchanged), and evaluation uses the same statistics.
The affine parameters keep learning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flnorm.runner.arrays import decode
from strategies._state_averaging import NumpyState
from strategies.fedavg_pooled import FedAvgPooled


class FixBN(FedAvgPooled):
    """FedAvgPooled that sends ``bn-frozen`` after ``freeze_after`` rounds and keeps the statistics."""

    def __init__(self, *, freeze_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.freeze_after = freeze_after
        self._frozen: NumpyState | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        frozen = server_round > self.freeze_after
        self._frozen = {k: decode(arrays[k]) for k in self.layout.stat_keys} if frozen else None
        config = ConfigRecord({**config, "bn-frozen": frozen})  # the caller's record is reused each round
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        out = super().aggregate_states(states, weights)
        if self._frozen is not None:
            out.update(self._frozen)
        return out
