"""Server optimizers (FedAdam, FedYogi) that step the trainable parameters only.

Flower's FedOpt family applies its optimizer to every array: BN running statistics and
the int64 counter included. Here the replies are aggregated like ``fedavg-pooled`` (BN
statistics pooled with the law of total variance, counters summed as integers), and the
optimizer then moves the trainable parameters from where they were sent, with the
averaged update as pseudo-gradient (Reddi et al., 2021; Flower's formulas):
``delta = avg - x``, ``m = b1 m + (1 - b1) delta``, ``v`` by the subclass's rule,
``x <- x + step * m / (sqrt(v) + tau)``. Moments are kept in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from strategies.fedavg import NumpyState
from strategies.fedavg_pooled import FedAvgPooled


class FedOpt(FedAvgPooled):
    """Pooled averaging, then a server optimizer step on ``trainable_keys``.

    Parameters
    ----------
    trainable_keys
        State keys of the model's trainable parameters.
    eta
        Server learning rate.
    beta_1, beta_2, tau
        Momentum, second-moment and adaptivity parameters (Flower's defaults).
    """

    # Server state across rounds that a checkpoint must keep.
    checkpoint_attrs = ("m_t", "v_t")

    def __init__(
        self, *, trainable_keys: frozenset[str], eta: float, beta_1: float = 0.9, beta_2: float = 0.99,
        tau: float = 1e-3, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trainable_keys = trainable_keys
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.m_t: NumpyState | None = None
        self.v_t: NumpyState | None = None

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_size(self, server_round: int) -> float:
        return self.eta

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        out = super().aggregate_states(states, weights)
        assert self.sent is not None
        keys = [k for k in out if k in self.trainable_keys]
        x = {k: self.sent[k].astype(np.float64) for k in keys}
        delta = {k: out[k].astype(np.float64) - x[k] for k in keys}
        m = self.m_t or {k: np.zeros_like(x[k]) for k in keys}
        v = self.v_t or {k: np.zeros_like(x[k]) for k in keys}
        self.m_t = {k: self.beta_1 * m[k] + (1 - self.beta_1) * delta[k] for k in keys}
        self.v_t = {k: self.second_moment(v[k], delta[k]) for k in keys}
        step = self.step_size(self.server_round)
        for k in keys:
            out[k] = (x[k] + step * self.m_t[k] / (np.sqrt(self.v_t[k]) + self.tau)).astype(out[k].dtype)
        return out
