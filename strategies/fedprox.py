"""``fedprox``: FedAvg on the server; clients add ``mu/2 * ||w - w_global||^2``.

FedProx (Li et al., 2020). As Flower's FedProx, the strategy puts ``proximal-mu`` in its
train instructions; flnorm's ClientApp adds the term over the trainable parameters. No
other strategy sends the key, so no other strategy's clients apply the term.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flnorm.protocol import PROXIMAL_MU
from strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg that sends ``proximal-mu`` with every train message.

    Parameters
    ----------
    proximal_mu
        The weight mu of the proximal term (``--proximal-mu``).
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config = ConfigRecord({**config, PROXIMAL_MU: self.proximal_mu})
        return super().configure_train(server_round, arrays, config, grid)
