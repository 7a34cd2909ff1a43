"""``fedprox``: FedAvg on the server; clients add ``mu/2 * ||w - w_global||^2``.

Flower's FedProx sends ``proximal-mu`` in the train config; flnorm's ClientApp applies
the term to the trainable parameters.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from strategies._schedule import EvaluationSchedule
from strategies._state_averaging import StateAveraging


class FedProx(EvaluationSchedule, StateAveraging, FlowerFedProx):
    """Flower's FedProx with dtype-safe, deterministic state averaging."""
