"""Strategies by name: the names and what their messages carry are ``flnorm.protocol.CONTRACTS``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import Strategy

from flnorm.config import ExperimentConfig
from flnorm.errors import unknown_choice
from flnorm.protocol import CONTRACTS
from flnorm.task import bn_layout, local_keys, new_model
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavg_pooled import FedAvgPooled
from strategies.fedbn import FedBN
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.fixbn import FixBN
from strategies.local_only import LocalOnly
from strategies.precisebn import PreciseBN
from strategies.silobn import SiloBN


def _trainable(cfg: ExperimentConfig) -> frozenset[str]:
    return frozenset(n for n, p in new_model(cfg).named_parameters() if p.requires_grad)


# name -> (class, its own arguments from the config)
STRATEGY_BUILDERS: dict[str, tuple[type[FedAvg], Callable[[ExperimentConfig], dict[str, Any]]]] = {
    "fedavg": (FedAvg, lambda cfg: {}),
    "fedavg-pooled": (FedAvgPooled, lambda cfg: {}),
    "fedbn": (FedBN, lambda cfg: {}),
    "silobn": (SiloBN, lambda cfg: {}),
    "fixbn": (FixBN, lambda cfg: {"freeze_after": cfg.fixbn_freeze_after}),
    "precisebn": (PreciseBN, lambda cfg: {"passes": cfg.precise_passes, "timeout": cfg.round_timeout}),
    "local": (LocalOnly, lambda cfg: {"model_keys": local_keys(cfg)}),
    "fedprox": (FedProx, lambda cfg: {"proximal_mu": cfg.proximal_mu}),
    "fedadam": (FedAdam, lambda cfg: {"eta": cfg.server_lr, "trainable_keys": _trainable(cfg)}),
    "fedyogi": (FedYogi, lambda cfg: {"eta": cfg.server_lr, "trainable_keys": _trainable(cfg)}),
}

if list(STRATEGY_BUILDERS) != list(CONTRACTS):  # pragma: no cover - developer error
    raise RuntimeError("strategies/registry.py and flnorm.protocol.CONTRACTS disagree")


def build_strategy(cfg: ExperimentConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``."""
    try:
        cls, own = STRATEGY_BUILDERS[cfg.strategy]
    except KeyError:
        raise unknown_choice("strategy", cfg.strategy, tuple(STRATEGY_BUILDERS)) from None
    return cls(
        layout=bn_layout(cfg),
        batch_size=cfg.batch_size,
        evaluates=cfg.evaluates,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        # A round goes ahead with min-replies nodes and averages what arrives (>= that).
        min_train_nodes=cfg.min_replies,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_replies,
        **own(cfg),
    )
