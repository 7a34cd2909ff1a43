"""``fedbn``: every BN module (affine parameters and statistics) stays on its client.

FedBN (Li et al., ICLR 2021). Nothing of a BN layer is sent either way; the rest is
averaged. Each client's BN lives in its ``context.state`` across rounds.
"""

from __future__ import annotations

from typing import Any

from flnorm.bn.layout import BNLayout
from flnorm.protocol import CONTRACTS
from strategies.fedavg import FedAvg


class FedBN(FedAvg):
    """FedAvg over every tensor that is not part of a BN module."""

    def __init__(self, *, layout: BNLayout, **kwargs: Any) -> None:
        super().__init__(layout=layout, local_keys=layout.local_keys(CONTRACTS["fedbn"].bn_local), **kwargs)
