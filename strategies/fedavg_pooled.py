"""``fedavg-pooled``: weights averaged, BN running statistics pooled exactly.

For each BN layer, client k's running mean ``m_k`` and variance (Bessel correction
undone: ``v_k = s_k^2 (b - 1) / b`` with ``b`` values per channel in a batch) describe its
``n_k`` samples; the global statistics are ``m = sum n_k m_k / N`` and
``v = sum n_k (v_k + m_k^2) / N - m^2``, stored back unbiased. ``num_batches_tracked``
is summed: the previous global count plus every client's increment (int64).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flnorm.bn.layout import BNLayout
from flnorm.bn.pooling import average_with_pooled_stats
from flnorm.runner.arrays import decode
from strategies._state_averaging import NumpyState
from strategies.fedavg import FedAvg


class FedAvgPooled(FedAvg):
    """FedAvg whose BN statistics are pooled with the law of total variance.

    Parameters
    ----------
    layout
        The model's BN layers (found by module type).
    batch_size
        The clients' local batch size (for the Bessel correction).
    **kwargs
        Flower FedAvg arguments.
    """

    def __init__(self, *, layout: BNLayout, batch_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = layout
        self.batch_size = batch_size
        self.previous: NumpyState | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.previous = {k: decode(arrays[k]) for k in self.layout.stat_keys}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        if self.previous is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        return average_with_pooled_stats(
            states, [int(w) for w in weights], self.layout, self.batch_size, self.previous
        )
