"""flnorm's Flower Message-API strategies, one per file, all over one BN-aware FedAvg."""

from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavg_pooled import FedAvgPooled
from strategies.fedbn import FedBN
from strategies.fedopt import FedOpt
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.fixbn import FixBN
from strategies.local_only import LocalOnly
from strategies.precisebn import PreciseBN
from strategies.registry import STRATEGY_BUILDERS, build_strategy
from strategies.silobn import SiloBN

__all__ = [
    "STRATEGY_BUILDERS", "FedAdam", "FedAvg", "FedAvgPooled", "FedBN", "FedOpt", "FedProx", "FedYogi",
    "FixBN", "LocalOnly", "PreciseBN", "SiloBN", "build_strategy",
]
