"""Dtype-safe weighted averaging, on a real BatchNorm model's state_dict."""

import numpy as np
import pytest
import torch

from flnorm.aggregation import weighted_average
from flnorm.models import build_model
from flnorm.norms import NormSpec


def _client_states(n=3, seed=0):
    states = []
    for k in range(n):
        torch.manual_seed(seed + k)
        model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
        model.train()
        for _ in range(k + 1):  # different counters per client
            model(torch.randn(8, 1, 28, 28))
        states.append({name: t.numpy().copy() for name, t in model.state_dict().items()})
    return states


def test_average_matches_float64_reference_and_keeps_dtypes():
    states = _client_states()
    weights = [100, 250, 50]
    out = weighted_average(states, weights)
    w = np.array(weights, dtype=np.float64) / sum(weights)
    for key, value in out.items():
        assert value.dtype == states[0][key].dtype, key
        if np.issubdtype(value.dtype, np.floating):
            ref = sum(wk * s[key].astype(np.float64) for wk, s in zip(w, states))
            np.testing.assert_allclose(value, ref.astype(value.dtype), rtol=1e-6, atol=1e-7)


def test_counter_stays_integer_and_exact():
    states = _client_states()
    counters = [int(s["body.0.2.num_batches_tracked"]) for s in states]
    assert counters == [1, 2, 3]
    out = weighted_average(states, [100, 250, 50])
    value = out["body.0.2.num_batches_tracked"]
    assert value.dtype == np.int64
    assert int(value) == round((100 * 1 + 250 * 2 + 50 * 3) / 400)  # 1.875 -> 2
    same = [{"n": np.array(7, dtype=np.int64)}] * 3
    assert int(weighted_average(same, [1.5, 2.5, 3.0])["n"]) == 7
    # a large counter is not rounded through float32/float64
    big = [{"n": np.array(2**62 + 1, dtype=np.int64)}, {"n": np.array(2**62 + 1, dtype=np.int64)}]
    assert int(weighted_average(big, [1, 3])["n"]) == 2**62 + 1


def test_order_of_clients_changes_only_rounding():
    # float sums depend on order at the last bit; the strategies sort replies by client id
    states = _client_states()
    a = weighted_average(states, [1, 2, 3])
    b = weighted_average(states[::-1], [3, 2, 1])
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weights", [[1, 0, 1], [1, -1, 1], [1, float("nan"), 1]])
def test_bad_weights_rejected(weights):
    with pytest.raises(ValueError, match="positive"):
        weighted_average(_client_states(), weights)


def test_mismatched_keys_rejected():
    a, b, _ = _client_states()
    b = dict(b)
    b.pop("head.weight")
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([a, b], [1, 1])
    with pytest.raises(ValueError, match="no client states"):
        weighted_average([], [])
