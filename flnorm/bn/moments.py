"""Per-channel moments and their exact pooling (the law of total variance).

Client k has ``n_k`` values per channel with mean ``m_k`` and population variance
``v_k``. The union has ``m = sum n_k m_k / N`` and ``v = sum n_k (v_k + m_k^2) / N - m^2``.
Averaging the ``v_k`` alone drops the spread of the client means.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flnorm.bn.layout import bn_modules


def unbiased_to_population(s2: torch.Tensor, n: float) -> torch.Tensor:
    """Undo Bessel's correction: ``v = s^2 (n - 1) / n``."""
    return s2 * ((n - 1) / n)


def population_to_unbiased(v: torch.Tensor, n: float) -> torch.Tensor:
    """Apply Bessel's correction: ``s^2 = v n / (n - 1)`` (``v`` itself when n <= 1)."""
    return v * (n / (n - 1)) if n > 1 else v.clone()


@dataclass(frozen=True)
class Moments:
    """``n`` values per channel, their per-channel ``mean`` and population ``var`` (float64)."""

    n: float
    mean: torch.Tensor
    var: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> Moments:
        """Moments of a BN input ``[N, C, *]`` per channel."""
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
        return cls(float(flat.shape[1]), flat.mean(1), flat.var(1, unbiased=False))


def pool_moments(parts: Sequence[Moments]) -> Moments:
    """Moments of the union of ``parts`` (exact, law of total variance)."""
    parts = [p for p in parts if p.n > 0]
    if not parts:
        raise ValueError("no moments to pool")
    total = sum(p.n for p in parts)
    mean = sum(p.n * p.mean for p in parts) / total
    second = sum(p.n * (p.var + p.mean.square()) for p in parts) / total
    return Moments(total, mean, (second - mean.square()).clamp_min(0.0))


@torch.no_grad()
def collect_moments(
    model: nn.Module, batches: Iterable[torch.Tensor], layers: Collection[str] | None = None
) -> dict[str, Moments]:
    """Moments of every BN layer's input (or of ``layers``, by name) over ``batches``, the
    model in eval mode.

    Eval mode: every BN normalizes with its current running statistics, so what a layer
    sees does not depend on how the data is batched. Run once per BN layer (installing
    the result each time) and every layer holds the population statistics of its input
    under the model whose upstream BN layers hold theirs, which is what the model uses
    at evaluation (see ``flnorm.bn.precise``).
    """
    modules = bn_modules(model)
    if layers is not None:
        unknown = sorted(set(layers) - set(modules))
        if unknown:
            raise ValueError(f"no BN layers {unknown} in the model (its BN layers: {list(modules)})")
        modules = {name: m for name, m in modules.items() if name in layers}
    parts: dict[str, list[Moments]] = {name: [] for name in modules}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: parts[name].append(Moments.of(args[0])))
        for name, m in modules.items()
    ]
    was_training = model.training
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {name: pool_moments(p) for name, p in parts.items() if p}
