"""FedWon's norm-free convolutions: scaled weight standardization and adaptive gradient clipping,
each checked against its published formula computed here in float64 NumPy."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flnorm.agc import FEDWON_AGC_CLIP, adaptive_clip_, clipped_parameters
from flnorm.config import ExperimentConfig
from flnorm.data import load_dataset
from flnorm.errors import ConfigError
from flnorm.models import build_model
from flnorm.norms import NormSpec
from flnorm.task import new_model
from flnorm.training import Standardize, batch_indices, train_local
from flnorm.ws_conv import WS_EPS, ScaledStdConv2d


def ws_reference(weight: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """W_hat[o] = g[o] (W[o] - mean W[o]) / sqrt(max(N var W[o], eps)), N = fan-in, biased var."""
    out = np.empty_like(weight, dtype=np.float64)
    for o in range(weight.shape[0]):
        w = weight[o].astype(np.float64)
        n = w.size
        out[o] = gain[o] * (w - w.mean()) / np.sqrt(max(n * w.var(), eps))
    return out


def test_ws_conv_convolves_with_the_standardized_kernel():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(3, 8, 5, padding=2, bias=True)
    with torch.no_grad():
        conv.gain.copy_(torch.rand(8, 1, 1, 1) + 0.5)
        conv.weight[3] = 0.25  # a constant channel: zero variance, the eps branch
    w_hat = ws_reference(conv.weight.detach().numpy(), conv.gain.detach().numpy().ravel(), WS_EPS)
    x = torch.randn(4, 3, 12, 12)
    expected = F.conv2d(x.double(), torch.from_numpy(w_hat), conv.bias.detach().double(), padding=2)
    torch.testing.assert_close(conv(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(w_hat[3]).max() == 0.0


def test_ws_kernel_has_zero_mean_and_variance_gain_squared_over_fan_in():
    conv = ScaledStdConv2d(16, 4, 3)
    with torch.no_grad():
        conv.gain.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]).view(4, 1, 1, 1))
    w = conv.standardized_weight().detach().double().flatten(1)
    fan_in = 16 * 3 * 3
    torch.testing.assert_close(w.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(w.var(1, correction=0) * fan_in,
                               torch.tensor([1.0, 4.0, 0.25, 9.0], dtype=torch.float64), rtol=1e-5, atol=0)


def test_ws_gradient_reaches_weight_and_gain():
    conv = ScaledStdConv2d(2, 3, 3)
    conv(torch.randn(2, 2, 6, 6)).square().sum().backward()
    assert conv.weight.grad.abs().sum() > 0 and conv.gain.grad.abs().sum() > 0


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_ws_models_have_no_norm_layer_and_no_buffer(model):
    net = build_model(model, NormSpec.parse("ws"), 10, (3, 32, 32))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is ScaledStdConv2d for m in convs)
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    assert not [m for m in net.modules() if isinstance(m, norms)]
    assert not list(net.buffers())  # nothing a client could keep or the server pool


def test_ws_needs_convolutions():
    with pytest.raises(ConfigError, match="mlp has none"):
        build_model("mlp", NormSpec.parse("ws"), 10, (1, 28, 28))


def agc_reference(weight: np.ndarray, grad: np.ndarray, clip: float, eps: float = 1e-3) -> np.ndarray:
    """Brock et al. (2021), eq. 3, unit by unit (rows; the whole tensor for a vector)."""
    w = weight.astype(np.float64).reshape(weight.shape[0], -1) if weight.ndim > 1 else weight[None].astype(np.float64)
    g = grad.astype(np.float64).reshape(w.shape)
    out = g.copy()
    for i in range(w.shape[0]):
        w_norm = max(np.linalg.norm(w[i]), eps)
        g_norm = np.linalg.norm(g[i])
        if g_norm / w_norm > clip:
            out[i] = clip * w_norm / g_norm * g[i]
    return out.reshape(grad.shape)


def test_agc_clips_units_by_definition():
    torch.manual_seed(1)
    conv_w = torch.randn(6, 3, 3, 3, requires_grad=True)
    lin_w = torch.randn(5, 7, requires_grad=True)
    vec = torch.zeros(7, requires_grad=True)  # zero weights: the eps floor
    grads = [torch.randn(6, 3, 3, 3) * torch.tensor([0.001, 0.01, 0.1, 1, 10, 100]).view(6, 1, 1, 1),
             torch.randn(5, 7) * torch.tensor([0.001, 0.1, 1, 10, 100]).view(5, 1), torch.randn(7)]
    params = [conv_w, lin_w, vec]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    adaptive_clip_(params, 0.1)
    for p, g in zip(params, grads, strict=True):
        expected = agc_reference(p.detach().numpy(), g.numpy(), 0.1)
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-5, atol=1e-8)
    changed = (conv_w.grad != grads[0]).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 6  # the conv mixes clipped and untouched units


def test_agc_leaves_the_classifier_alone():
    net = build_model("cnn", NormSpec.parse("ws"), 10, (3, 32, 32))
    kept = {id(p) for p in clipped_parameters(net)}
    assert id(net.head.weight) not in kept
    assert id(net.body[0][0].weight) in kept and id(net.body[0][0].gain) in kept


def test_local_training_with_agc_equals_a_reference_loop(mnist200):
    """train_local with --agc-clip is plain SGD on gradients clipped by the definition."""
    cfg = ExperimentConfig(norm="ws", partition="iid", clients=2)
    x, y, transform = mnist200
    ours = new_model(cfg)
    reference = copy.deepcopy(ours)
    train_local(ours, x, y, transform, steps=3, batch_size=16, lr=0.1, agc_clip=0.02,
                generator=torch.Generator().manual_seed(5))
    reference.train()
    head = {id(p) for p in reference.head.parameters()}
    for batch in batch_indices(len(y), 16, 3, torch.Generator().manual_seed(5)):
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(transform(x[batch])), y[batch]).backward()
        with torch.no_grad():
            for p in reference.parameters():
                if id(p) not in head:
                    p.grad.copy_(torch.from_numpy(agc_reference(p.numpy(), p.grad.numpy(), 0.02)).float())
                p -= 0.1 * p.grad
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    unclipped = new_model(cfg)
    train_local(unclipped, x, y, transform, steps=3, batch_size=16, lr=0.1,
                generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(unclipped.body[0][0].weight, ours.body[0][0].weight)  # clipping acted


def test_ws_trains_with_batch_size_one():
    cfg = ExperimentConfig(norm="ws", partition="iid", clients=2)
    data = load_dataset(cfg.dataset)
    model = new_model(cfg)
    before = copy.deepcopy(model.state_dict())
    result = train_local(model, data.train_x[:20], data.train_y[:20], Standardize(data.mean, data.std,
                         torch.device("cpu")), steps=5, batch_size=1, lr=0.01, agc_clip=cfg.agc_lambda,
                         generator=torch.Generator().manual_seed(0))
    assert np.isfinite(result.loss) and result.samples == 5
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_agc_clip_resolution_and_validation():
    assert ExperimentConfig(norm="ws").agc_lambda == FEDWON_AGC_CLIP
    assert ExperimentConfig(norm="ws", agc_clip=0).agc_lambda == 0.0
    assert ExperimentConfig(norm="bn").agc_lambda == 0.0
    assert ExperimentConfig(norm="bn", agc_clip=0.5).agc_lambda == 0.5
    with pytest.raises(ConfigError, match="agc-clip"):
        ExperimentConfig(agc_clip=-0.5)
