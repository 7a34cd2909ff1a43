"""``fixbn``: train normally, then freeze the global BN statistics.

FixBN (Zhong et al., 2023). For the first ``freeze_after`` rounds this is
``fedavg-pooled``; from round ``freeze_after + 1`` on, train messages carry
``bn-frozen``: clients train with every BN layer normalizing by the received global
statistics (leaving them unchanged), the server keeps those statistics, and evaluation
uses them. The affine parameters keep learning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flnorm.protocol import BN_FROZEN
from strategies.fedavg import NumpyState
from strategies.fedavg_pooled import FedAvgPooled


class FixBN(FedAvgPooled):
    """FedAvgPooled that freezes the BN statistics after ``freeze_after`` rounds."""

    def __init__(self, *, freeze_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.freeze_after = freeze_after

    def frozen(self, server_round: int) -> bool:
        return server_round > self.freeze_after

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.frozen(server_round):
            config = ConfigRecord({**config, BN_FROZEN: True})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        out = super().aggregate_states(states, weights)
        if self.frozen(self.server_round) and self.sent is not None:
            out.update({k: self.sent[k].copy() for k in self.layout.stat_keys})
        return out
