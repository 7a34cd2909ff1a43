"""BN running statistics in state dicts: pooling clients' and installing moments.

PyTorch keeps ``running_var`` as an EMA of *unbiased* batch variances, each over
``b * spatial`` values per channel. Pooling converts to population variances first
and stores the unbiased equivalent of the pooled variance back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from flnorm.aggregation import weighted_average
from flnorm.bn.layout import BNLayout
from flnorm.bn.moments import Moments, pool_moments, population_to_unbiased, unbiased_to_population

State = Mapping[str, np.ndarray]


def pool_running_stats(
    states: Sequence[State], samples: Sequence[int], layout: BNLayout, batch_size: int
) -> dict[str, np.ndarray]:
    """Pool the clients' BN running statistics with the law of total variance.

    Parameters
    ----------
    states
        Client state dicts (numpy), holding every key of ``layout.stat_keys``.
    samples
        Samples each client's statistics describe (its training-set size): the weights.
    layout
        The model's BN layers.
    batch_size
        Local batch size; a client with fewer samples used batches of all of them.

    Returns
    -------
    dict
        ``running_mean`` and ``running_var`` (unbiased, as PyTorch stores it) per layer;
        counters are not touched here.
    """
    out: dict[str, np.ndarray] = {}
    for layer in layout.layers:
        if not layer.tracks_stats:
            continue
        parts = []
        for state, n in zip(states, samples, strict=True):
            n = int(n)
            per_batch = min(batch_size, n) * layer.spatial
            var = unbiased_to_population(torch.from_numpy(np.asarray(state[layer.var_key], np.float64)), per_batch)
            mean = torch.from_numpy(np.asarray(state[layer.mean_key], np.float64))
            parts.append(Moments(float(n * layer.spatial), mean, var))
        pooled = pool_moments(parts)
        dtype = np.asarray(states[0][layer.mean_key]).dtype
        out[layer.mean_key] = pooled.mean.numpy().astype(dtype)
        out[layer.var_key] = population_to_unbiased(pooled.var, pooled.n).numpy().astype(dtype)
    return out


def summed_counters(states: Sequence[State], previous: State, layout: BNLayout) -> dict[str, np.ndarray]:
    """``num_batches_tracked`` of pooled statistics: the previous global count plus every
    client's increment, in int64 (the batches that the pooled statistics summarize)."""
    out: dict[str, np.ndarray] = {}
    for layer in layout.layers:
        if layer.tracks_stats:
            prev = np.asarray(previous[layer.count_key]).astype(np.int64)
            out[layer.count_key] = prev + sum(np.asarray(s[layer.count_key]).astype(np.int64) - prev for s in states)
    return out


def average_with_pooled_stats(
    states: Sequence[State], samples: Sequence[int], layout: BNLayout, batch_size: int, previous: State
) -> dict[str, np.ndarray]:
    """Sample-weighted average of every tensor; BN running statistics pooled exactly and
    counters summed (``previous`` is the global state the clients started from)."""
    out = weighted_average(states, samples)
    out.update(pool_running_stats(states, samples, layout, batch_size))
    out.update(summed_counters(states, previous, layout))
    return out


def install_moments(state: dict[str, np.ndarray], moments: Mapping[str, Moments], layout: BNLayout) -> None:
    """Write population moments into ``state`` as running statistics (in place)."""
    for layer in layout.layers:
        if layer.name not in moments or not layer.tracks_stats:
            continue
        m = moments[layer.name]
        dtype = np.asarray(state[layer.mean_key]).dtype
        state[layer.mean_key] = m.mean.numpy().astype(dtype)
        state[layer.var_key] = population_to_unbiased(m.var, m.n).numpy().astype(dtype)
