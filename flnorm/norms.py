"""Normalization layers, built by name.

Every constructor is channels-first, ``norm(num_channels) -> nn.Module``, as in timm's
``create_norm`` and torchvision's ``norm_layer`` argument; ``conv_layer()`` gives the
convolution constructor with ``nn.Conv2d``'s signature (timm's ``conv_layer``).

A norm string is ``BODY`` or ``BODY+fn`` or ``fn``:

- ``none`` no normalization; ``bn`` BatchNorm (statistics over N and the spatial dims);
- ``gn`` GroupNorm with ``groups`` groups (statistics over C/G channels and space);
- ``ln`` LayerNorm over (C, H, W) per sample, i.e. GroupNorm with one group;
- ``in`` InstanceNorm over (H, W) per sample and channel, i.e. GroupNorm with C groups;
- ``fn`` feature normalization of the penultimate feature, ``sqrt(d) z / max(||z||, eps)``;
- ``ws`` no normalization layer; every convolution standardizes its own kernel instead
  (scaled weight standardization, ``flnorm.ws_conv``: FedWon, with adaptive gradient
  clipping in local training, ``--agc-clip``).

Instance norm has no meaning on a flat feature vector (its statistics would cover one
element), so ``in`` normalizes feature maps only and leaves flat hidden layers as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from flnorm.errors import ConfigError, unknown_choice
from flnorm.ws_conv import ScaledStdConv2d

NormLayer = Callable[[int], nn.Module]
ConvLayer = Callable[..., nn.Module]  # nn.Conv2d's signature

FN_EPS = 1e-5


class FeatureNorm(nn.Module):
    """Feature normalization: ``sqrt(d) * z / max(||z||_2, eps)`` over the last dim.

    No learnable parameters. From "Understanding the Role of Layer Normalization in
    Label-Skewed Federated Learning" (TMLR 2024).
    """

    def __init__(self, eps: float = FN_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = z.shape[-1]
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(self.eps)
        return math.sqrt(d) * z / norm

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def _identity(num_channels: int) -> nn.Module:
    return nn.Identity()


def _feature_norm(num_features: int) -> nn.Module:
    return FeatureNorm()


def _layer_norm(num_channels: int) -> nn.Module:
    return nn.GroupNorm(1, num_channels)


def _instance_norm(num_channels: int) -> nn.Module:
    return nn.GroupNorm(num_channels, num_channels)


def _group_norm(num_channels: int, *, groups: int) -> nn.Module:
    if num_channels % groups:
        raise ConfigError(
            f"GroupNorm with {groups} groups cannot split {num_channels} channels; "
            "pick a group count that divides every layer width (e.g. 1, 2, 4, 8, 16, 32)"
        )
    return nn.GroupNorm(groups, num_channels)


BODY_NORMS: tuple[str, ...] = ("none", "bn", "gn", "ln", "in", "ws")
NORM_CHOICES: tuple[str, ...] = BODY_NORMS + ("fn",) + tuple(f"{b}+fn" for b in BODY_NORMS[1:])
POSITIONS: tuple[str, ...] = ("after", "before")


@dataclass(frozen=True)
class NormSpec:
    """A parsed norm choice.

    Attributes
    ----------
    body : str
        Norm used in the body (one of ``BODY_NORMS``).
    feature_norm : bool
        Whether FN is applied to the penultimate feature.
    groups : int
        Group count for ``gn``.
    position : str
        ``"after"`` (norm after the activation, as in the LN/FN paper) or ``"before"``.
    """

    body: str = "none"
    feature_norm: bool = False
    groups: int = 2
    position: str = "after"

    @classmethod
    def parse(cls, text: str, groups: int = 2, position: str = "after") -> NormSpec:
        """Parse ``none|bn|gn|ln|in|ws`` optionally followed by ``+fn``, or ``fn`` alone."""
        name = text.strip().lower()
        if name not in NORM_CHOICES:
            raise unknown_choice("norm", text, NORM_CHOICES)
        if position not in POSITIONS:
            raise unknown_choice("norm position", position, POSITIONS)
        if groups < 1:
            raise ConfigError(f"gn groups must be >= 1, got {groups}")
        if name == "fn":
            return cls("none", True, groups, position)
        body, _, head = name.partition("+")
        return cls(body, head == "fn", groups, position)

    @property
    def name(self) -> str:
        """Canonical string, e.g. ``gn+fn``."""
        if self.body == "none" and self.feature_norm:
            return "fn"
        return self.body + ("+fn" if self.feature_norm else "")

    def map_layer(self) -> NormLayer:
        """Constructor for feature maps ``[N, C, H, W]``."""
        return {
            "none": _identity,
            "bn": nn.BatchNorm2d,
            "gn": partial(_group_norm, groups=self.groups),
            "ln": _layer_norm,
            "in": _instance_norm,
            "ws": _identity,
        }[self.body]

    def flat_layer(self) -> NormLayer:
        """Constructor for flat hidden features ``[N, C]``."""
        return {
            "none": _identity,
            "bn": nn.BatchNorm1d,
            "gn": partial(_group_norm, groups=self.groups),
            "ln": _layer_norm,
            "in": _identity,
            "ws": _identity,
        }[self.body]

    def conv_layer(self) -> ConvLayer:
        """Convolution constructor: ``ScaledStdConv2d`` under ``ws``, else ``nn.Conv2d``."""
        return ScaledStdConv2d if self.body == "ws" else nn.Conv2d

    def head_layer(self) -> NormLayer:
        """Constructor for the penultimate feature, called with its width ``d``."""
        return _feature_norm if self.feature_norm else _identity
