"""``silobn``: BN statistics stay on the clients; BN affine parameters are shared.

SiloBN (Andreux et al., 2020). Running mean, variance and counter never leave the
client; the BN weight and bias are averaged with everything else.
"""

from __future__ import annotations

from typing import Any

from flnorm.bn.layout import BNLayout
from flnorm.protocol import CONTRACTS
from strategies.fedavg import FedAvg


class SiloBN(FedAvg):
    """FedAvg over every tensor except BN running statistics."""

    def __init__(self, *, layout: BNLayout, **kwargs: Any) -> None:
        super().__init__(layout=layout, local_keys=layout.local_keys(CONTRACTS["silobn"].bn_local), **kwargs)
