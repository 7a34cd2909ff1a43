"""What one client does in a round, in plain PyTorch (no Flower import).

The Flower ClientApp in ``clients/`` translates messages to these calls; a plain loop
(the overhead benchmark) can call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from flnorm.bn.layout import BNLayout
from flnorm.bn.moments import Moments, collect_moments
from flnorm.config import ExperimentConfig
from flnorm.data.datasets import load_dataset
from flnorm.data.federated import ClientData, client_data
from flnorm.data.site import load_site_data
from flnorm.device import configure_backends, place, resolve_device
from flnorm.diagnostics import feature_diagnostics
from flnorm.models import build_model
from flnorm.protocol import CLIENT, NUM_EXAMPLES
from flnorm.training import EVAL_BATCH, EvalResult, Standardize, evaluate, train_local

_threads_set = False
DIAGNOSTIC_SAMPLES = 256


def use_threads(num_threads: int) -> None:
    """Match torch's intra-op threads to the CPUs a client was given (once per process)."""
    global _threads_set
    if not _threads_set:
        torch.set_num_threads(num_threads)
        _threads_set = True


def round_seed(seed: int, server_round: int, client: int) -> int:
    """A seed for client ``client`` in ``server_round``, independent across the three."""
    return int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0])


def new_model(cfg: ExperimentConfig) -> nn.Module:
    """The model ``cfg`` names, initialized from ``cfg.seed`` (CPU, float32)."""
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, cfg.norm_spec, data.num_classes, data.input_shape, cfg.bias)


@lru_cache(maxsize=4)
def _worker_model(cfg: ExperimentConfig, device: str) -> nn.Module:
    """One model object per process and config, reused across calls (weights reloaded)."""
    return place(new_model(cfg), torch.device(device), cfg.channels_last)


@lru_cache(maxsize=4)
def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The seeded initial state dict: what a client holds before it has trained."""
    return new_model(cfg).state_dict()


@lru_cache(maxsize=4)
def bn_layout(cfg: ExperimentConfig) -> BNLayout:
    """The BN layers of the model ``cfg`` names."""
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    return BNLayout.from_model(new_model(cfg), data.input_shape)


def local_keys(cfg: ExperimentConfig) -> frozenset[str]:
    """State keys that never leave the client under ``cfg.strategy`` (its contract's ``bn_local``)."""
    if cfg.contract.bn_local == "model":
        return frozenset(initial_state(cfg))
    return bn_layout(cfg).local_keys(cfg.contract.bn_local)


def personal_keys(cfg: ExperimentConfig) -> frozenset[str]:
    """Keys of the client's own BN state its personalized model uses."""
    return local_keys(cfg) or bn_layout(cfg).stat_keys


@lru_cache(maxsize=4)
def _standardize(dataset: str, data_dir: str, download: bool, device: str, channels_last: bool) -> Standardize:
    data = load_dataset(dataset, data_dir, download)
    return Standardize(data.mean, data.std, torch.device(device), channels_last)


Tensors = Mapping[str, torch.Tensor]


class ClientTask:
    """A client's model, data and input transform for one config.

    Parameters
    ----------
    cfg
        The experiment.
    client
        Partition id, ``0 <= client < cfg.clients``.
    data_path
        A site's own data (``flnorm.data.site`` format) instead of partition ``client`` of
        ``cfg.dataset``; inputs are still standardized with ``cfg.dataset``'s statistics.
    threads
        torch intra-op threads for this process (set once); default ``cfg.num_cpus``.
    """

    def __init__(
        self, cfg: ExperimentConfig, client: int, data_path: str | None = None, threads: int | None = None
    ) -> None:
        use_threads(threads or cfg.num_cpus)
        self.cfg = cfg
        self.client = client
        self.device = resolve_device(cfg.device)
        configure_backends(self.device)
        self.model = _worker_model(cfg, str(self.device))
        if data_path:
            dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
            tensors = load_site_data(data_path, dataset.input_shape, dataset.num_classes)
            self.data = ClientData(*(t.to(self.device) for t in tensors))
        else:
            self.data = client_data(
                cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed,
                client, self.device,
            )
        self.transform = _standardize(
            cfg.dataset, cfg.data_dir, cfg.download, str(self.device), cfg.channels_last
        )
        self.layout = bn_layout(cfg)
        self.local_keys = local_keys(cfg)

    def load(self, received: Tensors, overlay: Tensors | None = None) -> None:
        """Install ``received`` (the global state), then ``overlay`` on top.

        Keys in neither (what the server never sends under FedBN/SiloBN) come from the
        seeded initial state.
        """
        state = dict(received)
        for key, value in initial_state(self.cfg).items():
            state.setdefault(key, value)
        state.update(overlay or {})
        self.model.load_state_dict(state, strict=True)

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the model's state dict on the CPU."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def shared_state(self) -> dict[str, torch.Tensor]:
        """What the client sends back: its state without the keys that stay local."""
        return {k: v for k, v in self.state().items() if k not in self.local_keys}

    def own_state(self) -> dict[str, torch.Tensor]:
        """What the client keeps between rounds: every BN tensor (statistics and affine) and
        every key that stays local (the whole model under ``local``)."""
        keep = self.layout.module_keys | self.local_keys
        return {k: v for k, v in self.state().items() if k in keep}

    def fit(self, server_round: int, proximal_mu: float = 0.0, bn_frozen: bool = False) -> dict[str, float | int]:
        """Train ``cfg.local_steps`` steps; return metrics."""
        cfg = self.cfg
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(round_seed(cfg.seed, server_round, self.client))
        result = train_local(
            self.model, self.data.train_x, self.data.train_y, self.transform,
            steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr, generator=generator,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, proximal_mu=proximal_mu,
            bn_frozen=bn_frozen, precision=cfg.precision, agc_clip=cfg.agc_lambda,
        )
        metrics: dict[str, float | int] = {
            "train_loss": result.loss,
            NUM_EXAMPLES: len(self.data.train_y),
            CLIENT: self.client,
            "fit_seconds": time.perf_counter() - start,
        }
        if cfg.diagnostics and cfg.evaluates(server_round):
            metrics.update(self.diagnostics())
        return metrics

    def diagnostics(self) -> dict[str, float]:
        """Feature-collapse diagnostics on a fixed subset of the client's training data."""
        n = len(self.data.train_y)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.client))[:DIAGNOSTIC_SAMPLES]
        return feature_diagnostics(self.model, self.transform(self.data.train_x[pick.to(self.device)]))

    @property
    def domains(self) -> tuple[str, ...]:
        """The dataset's domains (empty for a single-domain dataset or a site's own data)."""
        if self.data.test_domain is None:
            return ()
        return load_dataset(self.cfg.dataset, self.cfg.data_dir, self.cfg.download).domains

    def test(self, bn_batch_stats: bool = False) -> EvalResult:
        """Evaluate the loaded model on the client's test split (per domain where there are domains)."""
        return evaluate(self.model, self.data.test_x, self.data.test_y, self.transform,
                        bn_batch_stats=bn_batch_stats, groups=self.data.test_domain,
                        num_groups=len(self.domains))

    def moments(self, layers: Collection[str] | None = None, batch_size: int = EVAL_BATCH) -> dict[str, Moments]:
        """Moments of the loaded model's BN layers (or of ``layers``) over the client's training data."""
        x = self.data.train_x
        return collect_moments(
            self.model, (self.transform(x[i : i + batch_size]) for i in range(0, len(x), batch_size)), layers
        )
