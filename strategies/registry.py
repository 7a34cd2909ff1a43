"""Strategies by name (the names are ``flnorm.config.STRATEGIES``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import Strategy

from flnorm.config import STRATEGIES, ExperimentConfig
from flnorm.errors import unknown_choice
from strategies._state_averaging import mean_metrics
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx


def _common(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.clients,
        "train_metrics_aggr_fn": mean_metrics,
        "evaluate_metrics_aggr_fn": mean_metrics,
    }


STRATEGY_BUILDERS: dict[str, Callable[[ExperimentConfig], Strategy]] = {
    "fedavg": lambda cfg: FedAvg(**_common(cfg)),
    "fedprox": lambda cfg: FedProx(**_common(cfg), proximal_mu=cfg.proximal_mu),
}

if set(STRATEGY_BUILDERS) != set(STRATEGIES):  # pragma: no cover - developer error
    raise RuntimeError("strategies/registry.py and flnorm.config.STRATEGIES disagree")


def build_strategy(cfg: ExperimentConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``."""
    try:
        return STRATEGY_BUILDERS[cfg.strategy](cfg)
    except KeyError:
        raise unknown_choice("strategy", cfg.strategy, tuple(STRATEGY_BUILDERS)) from None
