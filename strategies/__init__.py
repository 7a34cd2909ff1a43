"""flnorm's Flower Message-API strategies, one per file."""

from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.registry import STRATEGY_BUILDERS, build_strategy

__all__ = ["STRATEGY_BUILDERS", "FedAvg", "FedProx", "build_strategy"]
