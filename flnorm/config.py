"""Experiment configuration: one frozen dataclass, validated in one place.

Every field carries its help text (read by the CLI, the Flower run-config check and the
README's flag table, ``flnorm.docs``) and its group:

- ``experiment``: what defines the science; travels to the clients in the experiment record;
- ``strategy``: a strategy's own parameters; they stay on the server, and a client learns
  what its strategy wants only from the strategy's instructions (``flnorm.protocol``);
- ``execution``: how the run is executed (devices, resources, paths, timeouts); a resumed
  run may change them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from flnorm.agc import FEDWON_AGC_CLIP
from flnorm.data.datasets import DATASET_DOMAINS, DATASETS, check_dataset_name
from flnorm.data.partition import PARTITION_FORMS, PartitionSpec, check_domains
from flnorm.errors import ConfigError, unknown_choice
from flnorm.models.registry import MODELS
from flnorm.norms import NORM_CHOICES, POSITIONS, NormSpec
from flnorm.precision import PRECISIONS, autocast_dtype
from flnorm.protocol import CONTRACTS, StrategyContract, contract

STRATEGIES: tuple[str, ...] = tuple(CONTRACTS)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# BN statistics used by the global evaluation (``local``: each client's own).
BN_EVAL: tuple[str, ...] = ("auto", "global", "precise", "batch", "local")
GROUPS: tuple[str, ...] = ("experiment", "strategy", "execution")


def _field(default: Any, help: str, group: str = "experiment") -> Any:  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help, "group": group})


def _choices(names: Any) -> str:
    return " | ".join(names)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one federated run, and how it is executed.

    Field names are the CLI flags (``--local-steps``) and the Flower run-config keys
    (``local-steps``) with dashes in place of underscores; each field's help and group
    are in its metadata (``help``, ``group``).
    """

    dataset: str = _field("mnist5k", f"dataset: {_choices(DATASETS)} (mnist5k and the multi-domain digits are embedded, offline)")
    model: str = _field("cnn", f"model: {_choices(MODELS)}")
    norm: str = _field("none", f"normalization: {_choices(NORM_CHOICES)} (BODY+fn adds FN before the head)")
    gn_groups: int = _field(2, "groups for gn (1 = LayerNorm, C = InstanceNorm; the LN/FN paper uses 2)")
    norm_position: str = _field("after", f"body norm {_choices(POSITIONS)} the activation (cnn, mlp)")
    bias: bool = _field(False, "give convs and linears biases (the LN/FN paper removes them)")
    strategy: str = _field("fedavg", f"strategy: {_choices(CONTRACTS)}")
    partition: str = _field("classes-2", f"partition: {_choices(PARTITION_FORMS)} (test sets split alike)")
    clients: int = _field(10, "number of clients (virtual SuperNodes)")
    rounds: int = _field(20, "federated rounds")
    local_steps: int = _field(10, "local SGD steps (batches) per client per round")
    batch_size: int = _field(32, "local batch size")
    lr: float = _field(0.01, "client learning rate (plain SGD)")
    momentum: float = _field(0.0, "client SGD momentum")
    weight_decay: float = _field(0.0, "client weight decay")
    agc_clip: float = _field(-1.0, "adaptive gradient clipping lambda in local training (flnorm.agc): "
                             f"-1 = auto ({FEDWON_AGC_CLIP:g} with --norm ws, as FedWon; off otherwise), 0 = off")
    proximal_mu: float = _field(0.01, "fedprox: proximal weight mu", "strategy")
    server_lr: float = _field(0.01, "fedadam, fedyogi: server learning rate eta", "strategy")
    fixbn_rounds: int = _field(0, "fixbn: rounds before BN statistics are frozen (0 = half of rounds)", "strategy")
    precise_passes: int = _field(0, "precisebn: statistics passes per round (0 = one per BN layer in forward order, "
                                 "exact; fewer measure every layer in each)",
                                 "strategy")
    bn_eval: str = _field("auto", f"BN statistics of the global evaluation: {_choices(BN_EVAL)} "
                          "(auto: precise for precisebn, batch for fedbn/silobn, else global)")
    diagnostics: bool = _field(False, "log feature-collapse diagnostics (penultimate feature norm, "
                               "top singular values) in every round that evaluates")
    eval_every: int = _field(1, "evaluate every N rounds and at the last (the rounds between leave "
                             "the test columns empty)")
    fraction_train: float = _field(1.0, "fraction of clients sampled for training each round")
    fraction_evaluate: float = _field(1.0, "fraction of clients sampled for evaluation (when a round evaluates)")
    seed: int = _field(0, "seed for partition, model init and client batches")
    precision: str = _field("fp32", f"local training's forward pass and loss: {_choices(PRECISIONS)} "
                            "(bf16/fp16 autocast; norms, statistics, updates, evaluation and "
                            "aggregation stay fp32)")
    channels_last: bool = _field(True, "conv weights and inputs in channels-last memory format "
                                 "(faster convolutions, same numbers to float rounding)", "execution")
    device: str = _field("auto", f"device: {_choices(DEVICES)}", "execution")
    num_cpus: int = _field(1, "CPUs per virtual client (Ray actor); its torch threads follow them",
                           "execution")
    num_gpus: float = _field(0.0, "GPUs per virtual client, fractional to share a GPU (e.g. 0.25)",
                             "execution")
    ray_cpus: int = _field(0, "CPUs Ray may use for the whole simulation (0 = all of this machine's)",
                           "execution")
    ray_address: str = _field("", "a running Ray cluster to run the clients on (host:port; 'auto' finds "
                              "one started on this machine); empty: RAY_ADDRESS if set, else a Ray "
                              "started here for the run", "execution")
    data_dir: str = _field("data", "where torchvision datasets live / are downloaded", "execution")
    download: bool = _field(True, "download torchvision datasets when missing", "execution")
    out: str = _field("", "run directory (default runs/<name>-<timestamp>)", "execution")
    node_timeout: float = _field(120.0, "seconds the server waits for all clients' nodes to connect",
                                 "execution")
    min_replies: int = _field(1, "sound train replies a round needs to update the model (fewer: "
                              "the model is kept)", "execution")
    round_timeout: float = _field(3600.0, "seconds to wait for a phase's replies; late ones count as "
                                  "failures", "execution")
    resume: bool = _field(False, "continue the run in --out after its last checkpointed round", "execution")
    verbose: bool = _field(False, "also show Flower's own log (its per-round lines and notices); by "
                           "default only flnorm's progress, warnings and errors", "execution")

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)
        if self.model not in MODELS:
            raise unknown_choice("model", self.model, tuple(MODELS))
        if self.strategy not in STRATEGIES:
            raise unknown_choice("strategy", self.strategy, STRATEGIES)
        if self.device not in DEVICES:
            raise unknown_choice("device", self.device, DEVICES)
        autocast_dtype(self.precision)  # refuses an unknown name with the valid ones
        if self.bn_eval not in BN_EVAL:
            raise unknown_choice("bn-eval", self.bn_eval, BN_EVAL)
        if self.bn_eval == "precise" and self.strategy != "precisebn":
            raise ConfigError("bn-eval precise needs --strategy precisebn (it computes those statistics)")
        self.norm_spec  # noqa: B018 - parses and validates
        check_domains(self.partition_spec, len(DATASET_DOMAINS.get(self.dataset, ())) or 1, self.clients,
                      dataset=f"dataset {self.dataset!r}", multi_domain=_choices(DATASET_DOMAINS))
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
        if not (self.agc_clip == -1 or (self.agc_clip >= 0 and math.isfinite(self.agc_clip))):
            raise ConfigError(f"agc-clip must be -1 (auto), 0 (off) or a positive lambda, got {self.agc_clip!r}")
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
    def contract(self) -> StrategyContract:
        """The strategy's row of the server-client contract."""
        return contract(self.strategy)

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
        return "batch" if self.contract.bn_local else "global"

    @property
    def agc_lambda(self) -> float:
        """The AGC clipping factor local training uses (0: no clipping), ``auto`` resolved."""
        if self.agc_clip == -1:
            return FEDWON_AGC_CLIP if self.norm_spec.body == "ws" else 0.0
        return self.agc_clip

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

    def to_flat(self, groups: tuple[str, ...] = GROUPS) -> dict[str, Any]:
        """Flower run-config form: dashed keys, scalar values (the fields of ``groups``)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)
                if f.metadata["group"] in groups}

    def client_record(self) -> dict[str, Any]:
        """What travels to the clients: every field but the strategy parameters."""
        return self.to_flat(("experiment", "execution"))

    def differs_from(self, other: ExperimentConfig) -> list[str]:
        """Flags of the experiment and strategy fields whose values differ (execution ignored)."""
        return [f.name.replace("_", "-") for f in fields(self)
                if f.metadata["group"] != "execution" and getattr(self, f.name) != getattr(other, f.name)]

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
