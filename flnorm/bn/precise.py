"""PreciseBN (Wu & Johnson, 2021), federated and exact.

With the weights frozen, every BN layer gets the population statistics of its input
over the (union of the) training data, pooled with equal weight per sample (not an EMA).

flnorm collects moments with the model in eval mode, so a layer's input is what it is
at evaluation and does not depend on batching; one pass makes the first BN layer exact,
the next pass the second (its input now normalized by exact statistics), and so on:
``passes = number of BN layers`` gives every layer the population statistics of the
eval-time network. Federated, each pass is one round trip: clients return per-layer
``(n, mean, var)`` over their data, the server pools them with the law of total
variance and installs the result.

An exact run measures one layer per pass (``pass_plan``): when a layer's turn comes,
every BN layer before it already holds its final statistics, and measuring it again in a
later pass would give the same numbers (same weights, same upstream statistics, same
data). The first layers see the largest inputs, so this saves most of the moment
computation; the result is the same as measuring every layer in every pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from flnorm.bn.layout import bn_input_sizes, bn_modules
from flnorm.bn.moments import Moments, collect_moments, population_to_unbiased

SEP = "/"


def moments_to_arrays(moments: Mapping[str, Moments]) -> dict[str, np.ndarray]:
    """Wire format: ``{layer}/n``, ``{layer}/mean``, ``{layer}/var`` as float64 arrays."""
    out: dict[str, np.ndarray] = {}
    for name, m in moments.items():
        out[f"{name}{SEP}n"] = np.array([m.n], dtype=np.float64)
        out[f"{name}{SEP}mean"] = m.mean.numpy()
        out[f"{name}{SEP}var"] = m.var.numpy()
    return out


def moments_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Moments]:
    """Inverse of ``moments_to_arrays``."""
    names = {k.rsplit(SEP, 1)[0] for k in arrays}
    return {
        name: Moments(
            float(np.asarray(arrays[f"{name}{SEP}n"])[0]),
            torch.from_numpy(np.asarray(arrays[f"{name}{SEP}mean"], dtype=np.float64)),
            torch.from_numpy(np.asarray(arrays[f"{name}{SEP}var"], dtype=np.float64)),
        )
        for name in names
    }


@torch.no_grad()
def set_running_stats(model: nn.Module, moments: Mapping[str, Moments]) -> None:
    """Install population moments as running statistics (unbiased variance, as PyTorch keeps)."""
    for name, m in bn_modules(model).items():
        if name in moments and m.track_running_stats:
            mom = moments[name]
            m.running_mean.copy_(mom.mean.to(m.running_mean))
            m.running_var.copy_(population_to_unbiased(mom.var, mom.n).to(m.running_var))


def pass_plan(order: Sequence[str], passes: int = 0) -> list[tuple[str, ...]]:
    """The BN layers each statistics pass measures, ``order`` being the layers in forward order.

    ``passes`` 0, or at least the number of layers: exact, one layer per pass in forward
    order. Fewer: every layer in each of ``passes`` passes (the first ``passes`` layers end
    exact, the later ones measured under upstream statistics still being corrected).
    """
    if not passes or passes >= len(order):
        return [(name,) for name in order]
    return [tuple(order)] * passes


def precise_statistics(
    model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]], passes: int = 0
) -> dict[str, Moments]:
    """Centralized PreciseBN: the passes of ``pass_plan(order, passes)`` (0 = exact).

    ``batches()`` yields the (standardized) inputs anew for every pass; the first batch
    also finds the layers' forward order (on the model's device, as the passes run).
    """
    order = tuple(bn_input_sizes(model, next(iter(batches()))))
    moments: dict[str, Moments] = {}
    for layers in pass_plan(order, passes):
        measured = collect_moments(model, batches(), layers)
        set_running_stats(model, measured)
        moments.update(measured)
    return moments
