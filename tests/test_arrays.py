"""flnorm's fast decoding of Flower Array payloads equals Flower's own."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from flnorm.records import decode, numpy_state, torch_state

CASES = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array(7, dtype=np.int64),  # num_batches_tracked: a 0-d int64
    np.zeros((0, 5), dtype=np.float64),
    np.array([1.5, -np.inf, np.nan], dtype=np.float16),
    np.arange(6, dtype=">i4").reshape(3, 2),  # big-endian
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # falls back to np.load
    np.array([True, False]),
]


@pytest.mark.parametrize("value", CASES, ids=lambda v: f"{v.dtype}{v.shape}")
def test_decode_equals_flower(value):
    array = Array(value)
    expected = array.numpy()
    got = decode(array)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable
    got[...] = 0  # a copy: the payload is unchanged
    np.testing.assert_array_equal(decode(array), expected)
    # copy=False views the payload, except where the header is Fortran-ordered (np.load fallback)
    assert decode(array, copy=False).flags.writeable == (not value.flags.c_contiguous)


def test_torch_state_equals_to_torch_state_dict():
    state = torch.nn.BatchNorm2d(3).state_dict() | torch.nn.Conv2d(1, 4, 3).state_dict()
    record = ArrayRecord(state)
    ours, flowers = torch_state(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers)
    for key in flowers:
        assert ours[key].dtype == flowers[key].dtype
        torch.testing.assert_close(ours[key], flowers[key], rtol=0, atol=0)
    assert list(numpy_state(record)) == list(record)
