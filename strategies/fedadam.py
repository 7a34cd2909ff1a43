"""``fedadam``: Flower's FedAdam on the trainable parameters; BN statistics pooled, never stepped."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from strategies._schedule import EvaluationSchedule
from strategies._server_optimizer import TrainableOnly


class FedAdam(EvaluationSchedule, TrainableOnly, FlowerFedAdam):
    """Adam server optimizer (Reddi et al., 2021) that leaves BN buffers to exact pooling."""
