"""``fedavg-pooled``: weights averaged, BN running statistics pooled exactly.

For each BN layer, client k's running mean ``m_k`` and variance (Bessel correction
undone: ``v_k = s_k^2 (b - 1) / b`` with ``b`` values per channel in a batch) describe its
``n_k`` samples; the global statistics are ``m = sum n_k m_k / N`` and
``v = sum n_k (v_k + m_k^2) / N - m^2``, stored back unbiased. ``num_batches_tracked``
is summed: the previous global count plus every client's increment (int64).
"""

from __future__ import annotations

from collections.abc import Sequence

from flnorm.bn.pooling import average_with_pooled_stats
from strategies.fedavg import FedAvg, NumpyState


class FedAvgPooled(FedAvg):
    """FedAvg whose BN statistics are pooled with the law of total variance."""

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        if self.sent is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        return average_with_pooled_stats(states, [int(w) for w in weights], self.layout, self.batch_size, self.sent)
