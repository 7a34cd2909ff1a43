"""``fedavg``: average everything, BatchNorm running statistics included.

The naive baseline most frameworks implement, done carefully: the int64 counter
``num_batches_tracked`` stays an integer and the sum does not depend on reply order.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from strategies._schedule import EvaluationSchedule
from strategies._state_averaging import StateAveraging


class FedAvg(EvaluationSchedule, StateAveraging, FlowerFedAvg):
    """Flower's FedAvg with dtype-safe, deterministic state averaging."""
