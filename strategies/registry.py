"""Strategies by name (the names are ``flnorm.config.STRATEGIES``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy

from flnorm.bn.layout import BNLayout
from flnorm.config import STRATEGIES, ExperimentConfig
from flnorm.errors import unknown_choice
from flnorm.task import bn_layout, new_model
from strategies._state_averaging import mean_metrics
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavg_pooled import FedAvgPooled
from strategies.fedbn import FedBN
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.fixbn import FixBN
from strategies.precisebn import PreciseBN
from strategies.silobn import SiloBN


@dataclass(frozen=True)
class StrategyContext:
    """What the builders need to know about the run."""

    cfg: ExperimentConfig
    layout: BNLayout
    trainable_keys: frozenset[str]

    @property
    def common(self) -> dict[str, Any]:
        return {
            "fraction_train": self.cfg.fraction_train,
            "fraction_evaluate": self.cfg.fraction_evaluate,
            # A round goes ahead with min-replies nodes and averages what arrives (>= that).
            "min_train_nodes": self.cfg.min_replies,
            "min_evaluate_nodes": 1,
            "min_available_nodes": self.cfg.min_replies,
            "train_metrics_aggr_fn": mean_metrics,
            "evaluate_metrics_aggr_fn": mean_metrics,
            "evaluates": self.cfg.evaluates,
        }

    @property
    def pooled(self) -> dict[str, Any]:
        return {**self.common, "layout": self.layout, "batch_size": self.cfg.batch_size}

    @property
    def optimizer(self) -> dict[str, Any]:
        return {**self.pooled, "trainable_keys": self.trainable_keys, "eta": self.cfg.server_lr,
                "eta_l": self.cfg.lr}


STRATEGY_BUILDERS: dict[str, Callable[[StrategyContext], Strategy]] = {
    "fedavg": lambda c: FedAvg(**c.common),
    "fedavg-pooled": lambda c: FedAvgPooled(**c.pooled),
    "fedbn": lambda c: FedBN(layout=c.layout, **c.common),
    "silobn": lambda c: SiloBN(layout=c.layout, **c.common),
    "fixbn": lambda c: FixBN(freeze_after=c.cfg.fixbn_freeze_after, **c.pooled),
    "precisebn": lambda c: PreciseBN(layout=c.layout, passes=c.cfg.precise_passes, **c.common),
    "fedprox": lambda c: FedProx(proximal_mu=c.cfg.proximal_mu, **c.common),
    "fedadam": lambda c: FedAdam(**c.optimizer),
    "fedyogi": lambda c: FedYogi(**c.optimizer),
}

if set(STRATEGY_BUILDERS) != set(STRATEGIES):  # pragma: no cover - developer error
    raise RuntimeError("strategies/registry.py and flnorm.config.STRATEGIES disagree")


def build_strategy(cfg: ExperimentConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``."""
    try:
        builder = STRATEGY_BUILDERS[cfg.strategy]
    except KeyError:
        raise unknown_choice("strategy", cfg.strategy, tuple(STRATEGY_BUILDERS)) from None
    trainable = frozenset(n for n, p in new_model(cfg).named_parameters() if p.requires_grad)
    return builder(StrategyContext(cfg, bn_layout(cfg), trainable))
