"""Experiment configuration: one frozen dataclass, validated in one place."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from flnorm.data.datasets import check_dataset_name
from flnorm.data.partition import PartitionSpec
from flnorm.errors import ConfigError, unknown_choice
from flnorm.models.registry import MODELS
from flnorm.norms import NormSpec

# Names of the Flower strategies in ``strategies/`` (the registry there must match).
STRATEGIES: tuple[str, ...] = (
    "fedavg", "fedavg-pooled", "fedbn", "silobn", "fixbn", "precisebn", "fedprox", "fedadam", "fedyogi",
)
# What of each BN module stays on the client: every tensor, or the statistics only.
LOCAL_BN: dict[str, str] = {"fedbn": "module", "silobn": "stats"}
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# BN statistics used by the global evaluation (``local``: each client's own).
BN_EVAL: tuple[str, ...] = ("auto", "global", "precise", "batch", "local")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one federated run.

    Field names are the CLI flags (``--local-steps``) and the Flower run-config keys
    (``local-steps``) with dashes in place of underscores.
    """

    dataset: str = "mnist5k"
    model: str = "cnn"
    norm: str = "none"
    gn_groups: int = 2
    norm_position: str = "after"
    bias: bool = False
    strategy: str = "fedavg"
    partition: str = "classes-2"
    clients: int = 10
    rounds: int = 20
    local_steps: int = 10
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.01
    server_lr: float = 0.01
    fixbn_rounds: int = 0
    precise_passes: int = 0
    bn_eval: str = "auto"
    diagnostics: bool = False
    eval_every: int = 1
    channels_last: bool = True
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_cpus: int = 1
    num_gpus: float = 0.0
    ray_cpus: int = 0
    data_dir: str = "data"
    download: bool = True
    out: str = ""
    node_timeout: float = 120.0
    min_replies: int = 1
    round_timeout: float = 3600.0
    resume: bool = False

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)
        if self.model not in MODELS:
            raise unknown_choice("model", self.model, tuple(MODELS))
        if self.strategy not in STRATEGIES:
            raise unknown_choice("strategy", self.strategy, STRATEGIES)
        if self.device not in DEVICES:
            raise unknown_choice("device", self.device, DEVICES)
        if self.bn_eval not in BN_EVAL:
            raise unknown_choice("bn-eval", self.bn_eval, BN_EVAL)
        if self.bn_eval == "precise" and self.strategy != "precisebn":
            raise ConfigError("bn-eval precise needs --strategy precisebn (it computes those statistics)")
        self.norm_spec  # noqa: B018 - parses and validates
        self.partition_spec  # noqa: B018
        positive = {
            "clients": self.clients, "rounds": self.rounds, "local_steps": self.local_steps,
            "batch_size": self.batch_size, "num_cpus": self.num_cpus, "eval_every": self.eval_every,
            "min_replies": self.min_replies,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("fixbn_rounds", "precise_passes", "ray_cpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
        if not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            raise ConfigError(f"server-lr must be a positive number, got {self.server_lr!r}")
        if self.resume and not self.out:
            raise ConfigError("resume needs out: the run directory to continue")
        if self.min_replies > self.clients:
            raise ConfigError(f"min-replies={self.min_replies} exceeds clients={self.clients}")
        if not (self.round_timeout > 0 and math.isfinite(self.round_timeout)):
            raise ConfigError(f"round-timeout must be a positive number of seconds, got {self.round_timeout!r}")
        for name in ("momentum", "weight_decay", "proximal_mu", "num_gpus", "node_timeout"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {value!r}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)!r}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    @property
    def norm_spec(self) -> NormSpec:
        return NormSpec.parse(self.norm, groups=self.gn_groups, position=self.norm_position)

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec.parse(self.partition)

    @property
    def bn_eval_mode(self) -> str:
        """The BN statistics of the global evaluation, ``auto`` resolved.

        ``precise`` for precisebn, ``batch`` (test-batch statistics) where BN statistics stay
        on the clients (fedbn, silobn: there are no global ones), else ``global``.
        """
        if self.bn_eval != "auto":
            return self.bn_eval
        if self.strategy == "precisebn":
            return "precise"
        return "batch" if self.strategy in LOCAL_BN else "global"

    def evaluates(self, server_round: int) -> bool:
        """Whether round ``server_round`` evaluates: every ``eval_every``-th and the last."""
        return server_round % self.eval_every == 0 or server_round == self.rounds

    @property
    def fixbn_freeze_after(self) -> int:
        """Rounds of normal training before fixbn freezes the statistics."""
        return self.fixbn_rounds or self.rounds // 2

    @property
    def run_name(self) -> str:
        """A readable name for the run directory."""
        return (
            f"{self.dataset}-{self.model}-{self.norm_spec.name}-{self.strategy}-"
            f"{self.partition_spec.name}-c{self.clients}-s{self.seed}"
        )

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_flat(self) -> dict[str, Any]:
        """Flower run-config form: dashed keys, scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Build from dashed (or underscored) keys, e.g. a Flower run config.

        Unknown keys are an error; values are coerced to the field's type.
        """
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise unknown_choice("config key", key, tuple(k.replace("_", "-") for k in known))
            kwargs[name] = _coerce(name, known[name].type, value)
        return cls(**kwargs)


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = {"int": int, "float": float, "str": str, "bool": bool}[str(annotation)]
    if kind is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ConfigError(f"{name.replace('_', '-')} must be true or false, got {value!r}")
        return bool(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name.replace('_', '-')} must be an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name.replace('_', '-')} must be {kind.__name__}, got {value!r}") from None
