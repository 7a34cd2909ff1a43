"""``local``: the local-only baseline (FedBN's SingleSet): no federation at all.

Every key of the model stays on its client (``local_keys`` = the whole state dict), so
train and evaluate messages carry an empty model and replies return none; each client
trains its own model from the seeded initial one, round after round, on the same batch
stream a federated strategy would use. The server's model stays the initial one; the
baseline's figure is the personalized accuracy (each client's own model on its own test
split). A federated method is worth running only where it beats this.
"""

from __future__ import annotations

from typing import Any

from strategies.fedavg import FedAvg


class LocalOnly(FedAvg):
    """FedAvg with every key kept local: nothing is sent, nothing averaged."""

    def __init__(self, *, model_keys: frozenset[str], **kwargs: Any) -> None:
        super().__init__(local_keys=model_keys, **kwargs)
