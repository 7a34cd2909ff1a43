"""``fedyogi``: Flower's FedYogi on the trainable parameters; BN statistics pooled, never stepped."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi as FlowerFedYogi

from strategies._schedule import EvaluationSchedule
from strategies._server_optimizer import TrainableOnly


class FedYogi(EvaluationSchedule, TrainableOnly, FlowerFedYogi):
    """Yogi server optimizer (Reddi et al., 2021) that leaves BN buffers to exact pooling."""
