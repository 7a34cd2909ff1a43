"""Adaptive gradient clipping (AGC; Brock et al., ICML 2021, "High-Performance Large-Scale
Image Recognition Without Normalization"), as FedWon uses it in local training.

For every *unit* ``i`` of a parameter (a row of a linear weight, an output channel of a
convolution kernel; the whole tensor for a vector or a scalar), with ``||.||`` the
Frobenius norm over the unit:

    G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i     if ||G_i|| / max(||W_i||, eps) > lambda

and ``G_i`` unchanged otherwise; ``eps = 1e-3`` keeps zero-initialized parameters from
freezing. NF-Nets leave the final classifier unclipped; ``clipped_parameters`` does too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

AGC_EPS = 1e-3
# Below this gradient norm a unit is left as it is (0/0 guard).
GRAD_FLOOR = 1e-6
# lambda for --norm ws when --agc-clip is left at auto (see the config field's help).
FEDWON_AGC_CLIP = 1.28


def unit_norms(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of every unit of ``t`` (its first dim), broadcastable against ``t``."""
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: Iterable[torch.Tensor], clip: float, eps: float = AGC_EPS) -> None:
    """Clip the gradients of ``params`` unit-wise in place (``clip`` is lambda)."""
    for p in params:
        if p.grad is None:
            continue
        max_norm = unit_norms(p).clamp_min(eps) * clip
        grad_norm = unit_norms(p.grad)
        factor = max_norm / grad_norm.clamp_min(GRAD_FLOOR)
        p.grad.mul_(torch.where(grad_norm > max_norm, factor, torch.ones_like(factor)))


def clipped_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The trainable parameters AGC clips: all but those of the final classifier ``model.head``."""
    head = getattr(model, "head", None)
    skip = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
