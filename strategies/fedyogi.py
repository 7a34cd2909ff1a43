"""``fedyogi``: Yogi on the server (Reddi et al., 2021), trainable parameters only.

Flower's FedYogi rule: ``v = v - (1 - b2) delta^2 sign(v - delta^2)`` and the step
``eta``. BN statistics are pooled, never stepped (``strategies.fedopt``).
"""

from __future__ import annotations

import numpy as np

from strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """Yogi server optimizer that leaves BN buffers to exact pooling."""

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta**2 * np.sign(v - delta**2)
