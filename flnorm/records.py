"""Flower records <-> NumPy/torch state dicts, for the server, the strategies and the clients.

``decode`` reads Flower ``Array`` payloads without ``np.load``.

A Flower ``Array`` holds its tensor as ``.npy`` bytes; ``Array.numpy()`` reads them with
``np.load``, which parses the header text with ``ast.literal_eval`` for every tensor:
about 2 ms per model of the paper CNN, and the server decodes every reply several times a
round (NaN check, aggregation, checkpoint) while the clients wait. The header of a given
tensor's bytes repeats round after round, so it is parsed once and cached; the data is
then read with ``np.frombuffer``. Anything but a C-ordered ``.npy`` version 1.0 payload
falls back to ``Array.numpy()``.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from flnorm.aggregation import nonfinite_keys

_MAGIC = b"\x93NUMPY\x01\x00"  # .npy format version 1.0
_PREFIX = len(_MAGIC) + 2  # magic, version, uint16 little-endian header length


@lru_cache(maxsize=4096)
def _header(header: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, shape) of a ``.npy`` v1.0 header, or None where it is not C-ordered."""
    stream = io.BytesIO(header)
    np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    if fortran_order or dtype.hasobject:
        return None
    return dtype, tuple(shape)


def decode(array: Array, copy: bool = True) -> np.ndarray:
    """``array.numpy()``, faster. ``copy=False`` returns a read-only view of the bytes."""
    data = array.data
    if not isinstance(data, bytes) or not data.startswith(_MAGIC):
        return array.numpy()
    end = _PREFIX + int.from_bytes(data[len(_MAGIC) : _PREFIX], "little")
    parsed = _header(data[:end])
    if parsed is None:
        return array.numpy()
    dtype, shape = parsed
    out = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=end).reshape(shape)
    return out.copy() if copy else out


def numpy_state(record: ArrayRecord, copy: bool = True) -> dict[str, np.ndarray]:
    """Every array of ``record`` as a NumPy array, in the record's order."""
    return {key: decode(array, copy) for key, array in record.items()}


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, faster (writable CPU tensors)."""
    return {key: torch.from_numpy(decode(array)) for key, array in record.items()}


def array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of NumPy arrays, shapes kept (0-d counters stay 0-d).

    ``np.ascontiguousarray`` would turn a 0-d array into shape ``[1]``: BatchNorm's
    ``num_batches_tracked`` is a 0-d tensor in PyTorch's state dict.
    """
    return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in state.items()})


def nonfinite_update(msg: Message) -> str | None:
    """Why a train reply must not be averaged in (NaN/Inf arrays), or None if it is sound."""
    for record in msg.content.array_records.values():
        bad = nonfinite_keys(numpy_state(record, copy=False))
        if bad:
            return f"non-finite values in {len(bad)} arrays ({', '.join(bad[:3])})"
    return None
