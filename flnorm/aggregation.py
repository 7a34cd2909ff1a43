"""Weighted averaging of model states that keeps every tensor's dtype.

Floating tensors are averaged in float64 and cast back. Integer tensors (BatchNorm's
``num_batches_tracked`` counter) are averaged in exact integer arithmetic and rounded,
so they stay integers: when every client ran K steps from the same counter c, the result
is c + K.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

State = Mapping[str, np.ndarray]


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Average ``states`` key by key with ``weights`` (need not sum to 1).

    Raises
    ------
    ValueError
        If there are no states, weights are not positive, or keys/shapes differ.
    """
    if not states:
        raise ValueError("nothing to average: no client states")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be positive and finite, got {list(weights)}")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise ValueError("client states have different keys")
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for key in keys:
        arrays = [np.asarray(s[key]) for s in states]
        first = arrays[0]
        if any(a.shape != first.shape for a in arrays):
            raise ValueError(f"{key}: shapes differ across clients")
        if np.issubdtype(first.dtype, np.integer) or first.dtype == np.bool_:
            out[key] = _integer_mean(arrays, weights).astype(first.dtype)
        else:  # one float64 product buffer reused: no temporary per client
            acc = np.multiply(first, w[0], dtype=np.float64)
            term = np.empty_like(acc)
            for a, wk in zip(arrays[1:], w[1:], strict=True):
                acc += np.multiply(a, wk, out=term, dtype=np.float64)
            out[key] = acc.astype(first.dtype)
    return out


def _integer_mean(arrays: list[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean rounded half up, in exact rational arithmetic (no float rounding)."""
    fw = [Fraction(w) for w in weights]
    total = sum(fw)
    columns = zip(*(a.reshape(-1).tolist() for a in arrays), strict=True)
    values = [math.floor(sum(w * v for w, v in zip(fw, col, strict=True)) / total + Fraction(1, 2)) for col in columns]
    return np.asarray(values, dtype=np.int64).reshape(arrays[0].shape)


def nonfinite_keys(state: State) -> list[str]:
    """Keys of floating-point arrays in ``state`` holding NaN or Inf (a poisoned update)."""
    return [
        k for k, v in state.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
    ]
