"""``fedadam``: Adam on the server (Reddi et al., 2021), trainable parameters only.

Flower's FedAdam rule: ``v = b2 v + (1 - b2) delta^2`` and the bias-corrected step
``eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))`` in round t. BN statistics are pooled, never
stepped (``strategies.fedopt``).
"""

from __future__ import annotations

import numpy as np

from strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """Adam server optimizer that leaves BN buffers to exact pooling."""

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * delta**2

    def step_size(self, server_round: int) -> float:
        t = server_round + 1.0
        return float(self.eta * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t))
