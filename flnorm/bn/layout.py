"""Where the BatchNorm layers of a model are, found by module type.

Never by name: torchvision's ResNet calls a shortcut's BN ``downsample.1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_modules(model: nn.Module) -> dict[str, _BatchNorm]:
    """All BatchNorm modules (any ``_BatchNorm`` subclass) by qualified name, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def bn_input_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """H*W of every BN layer's input (1 for flat features) in one eval-mode forward pass of
    ``x``, keyed in the order the pass reaches the layers."""
    spatial: dict[str, int] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, name=name: spatial.__setitem__(name, int(args[0][0, 0].numel()))
        )
        for name, m in bn_modules(model).items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return spatial


@dataclass(frozen=True)
class BNLayer:
    """One BN layer: its state-dict keys and how many values per channel one sample gives.

    ``spatial`` is H*W of the layer's input (1 for flat features): a batch of b samples
    gives ``b * spatial`` values per channel, the count PyTorch's Bessel correction uses.
    """

    name: str
    spatial: int
    affine: bool
    tracks_stats: bool

    @property
    def mean_key(self) -> str:
        return f"{self.name}.running_mean"

    @property
    def var_key(self) -> str:
        return f"{self.name}.running_var"

    @property
    def count_key(self) -> str:
        return f"{self.name}.num_batches_tracked"

    @property
    def stat_keys(self) -> tuple[str, ...]:
        return (self.mean_key, self.var_key, self.count_key) if self.tracks_stats else ()

    @property
    def affine_keys(self) -> tuple[str, ...]:
        return (f"{self.name}.weight", f"{self.name}.bias") if self.affine else ()


@dataclass(frozen=True)
class BNLayout:
    """The BN layers of a model, with helpers to split its state dict.

    ``layers`` are in the model's module order, ``order`` names them in the order a
    forward pass reaches them (what a BN layer sees depends only on the layers before it).
    """

    layers: tuple[BNLayer, ...]
    order: tuple[str, ...] = ()

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: tuple[int, ...]) -> BNLayout:
        """Inspect ``model`` with one forward pass on zeros of ``[2, *input_shape]``."""
        spatial = bn_input_sizes(model, torch.zeros(2, *input_shape))
        return cls(
            tuple(BNLayer(name, spatial[name], m.affine, m.track_running_stats)
                  for name, m in bn_modules(model).items()),
            tuple(spatial),
        )

    @cached_property
    def stat_keys(self) -> frozenset[str]:
        """running_mean, running_var and num_batches_tracked of every BN layer."""
        return frozenset(k for layer in self.layers for k in layer.stat_keys)

    @cached_property
    def module_keys(self) -> frozenset[str]:
        """Every tensor of every BN module: statistics and affine parameters."""
        return frozenset(k for layer in self.layers for k in layer.stat_keys + layer.affine_keys)

    def local_keys(self, scope: str) -> frozenset[str]:
        """The keys a strategy keeps on the client: ``scope`` is a contract's ``bn_local``
        (``""`` none, ``"module"`` every BN tensor, ``"stats"`` the running statistics)."""
        return {"": frozenset(), "module": self.module_keys, "stats": self.stat_keys}[scope]

    def __bool__(self) -> bool:
        return bool(self.layers)
