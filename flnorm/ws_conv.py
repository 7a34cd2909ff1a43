"""Convolution with scaled weight standardization (NF-Nets; FedWon's ``WSConv``).

The layer convolves with a reparameterized kernel instead of its raw weight ``W``:

    W_hat[o] = g[o] * (W[o] - mean(W[o])) / sqrt(max(N * var(W[o]), eps))

per output channel ``o``, with ``mean`` and the biased ``var`` over the ``N = C_in/groups *
kH * kW`` fan-in entries of that channel and a learnable gain ``g`` (initialized to 1).
Each output channel then has zero mean and variance ``g**2 / N``: the signal-propagation
property that lets a network train without normalization layers (Brock et al., ICLR 2021,
"Characterizing signal propagation to close the performance gap in unnormalized ResNets";
DeepMind's reference uses ``eps = 1e-4``). FedWon (Zhuang & Lyu, ICLR 2024) replaces every
convolution by this layer and removes all normalization layers.

No statistics of the data are involved: nothing stays on a client, and a batch of one
trains exactly like a larger one.
"""

from __future__ import annotations

import torch
from torch import nn

WS_EPS = 1e-4


class ScaledStdConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is scaled-weight-standardized at every forward pass."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:  # noqa: ANN002, ANN003 - nn.Conv2d's
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The kernel the layer convolves with, ``W_hat``."""
        w = self.weight
        fan_in = w[0].numel()
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps)) * self.gain
        return (w - mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # standardized in the weight's dtype (fp32); under autocast the convolution casts it
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


__all__ = ["WS_EPS", "ScaledStdConv2d"]
