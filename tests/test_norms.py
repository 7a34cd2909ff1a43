"""Every norm against its definition on a [N, C, H, W] tensor."""

import math

import pytest
import torch
import torch.nn.functional as F

from flnorm.errors import ConfigError
from flnorm.norms import NORM_CHOICES, FeatureNorm, NormSpec


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1


def test_gn_one_group_is_layer_norm(x):
    gn = NormSpec.parse("gn", groups=1).map_layer()(8)
    expected = F.layer_norm(x, x.shape[1:], eps=gn.eps)
    torch.testing.assert_close(gn(x), expected)


def test_gn_c_groups_is_instance_norm(x):
    gn = NormSpec.parse("gn", groups=8).map_layer()(8)
    expected = F.instance_norm(x, eps=gn.eps)
    torch.testing.assert_close(gn(x), expected)


def test_ln_and_in_equal_their_group_norm(x):
    torch.testing.assert_close(NormSpec.parse("ln").map_layer()(8)(x), F.layer_norm(x, x.shape[1:]))
    torch.testing.assert_close(NormSpec.parse("in").map_layer()(8)(x), F.instance_norm(x))


def test_gn_two_groups_by_hand(x):
    gn = NormSpec.parse("gn", groups=2).map_layer()(8)
    g = x.view(6, 2, -1)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    expected = ((g - mean) / torch.sqrt(var + gn.eps)).view_as(x)
    torch.testing.assert_close(gn(x), expected)


def test_bn_normalizes_over_batch_and_space(x):
    bn = NormSpec.parse("bn").map_layer()(8).train()
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + bn.eps))


def test_flat_layers_accept_vectors():
    v = torch.randn(4, 16)
    for name in ("bn", "gn", "ln"):
        assert NormSpec.parse(name).flat_layer()(16)(v).shape == v.shape
    torch.testing.assert_close(NormSpec.parse("ln").flat_layer()(16)(v), F.layer_norm(v, (16,)))
    # instance norm of a vector would normalize single elements: left out on flat features
    assert isinstance(NormSpec.parse("in").flat_layer()(16), torch.nn.Identity)


def test_feature_norm_definition():
    z = torch.randn(5, 192)
    out = FeatureNorm()(z)
    torch.testing.assert_close(out, math.sqrt(192) * z / z.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out.norm(dim=1), torch.full((5,), math.sqrt(192)))
    assert not list(FeatureNorm().parameters())
    torch.testing.assert_close(FeatureNorm()(torch.zeros(2, 4)), torch.zeros(2, 4))  # eps guard


def test_ln_without_affine_is_mean_shift_then_fn():
    z = torch.randn(7, 32, dtype=torch.float64)
    centered = z - z.mean(1, keepdim=True)
    ln = F.layer_norm(z, (32,), eps=0.0)
    torch.testing.assert_close(ln, FeatureNorm(eps=0.0)(centered))


@pytest.mark.parametrize("name", NORM_CHOICES)
def test_every_choice_parses(name):
    spec = NormSpec.parse(name)
    assert spec.name == name
    assert spec.feature_norm == name.endswith("fn")


@pytest.mark.parametrize("bad", ["foo", "batchnorm", "fn+bn", "gn+ln", ""])
def test_unknown_norm_lists_choices(bad):
    with pytest.raises(ConfigError, match="valid choices: none, bn, gn, ln, in, ws, fn"):
        NormSpec.parse(bad)


def test_group_count_must_divide_channels():
    with pytest.raises(ConfigError, match="cannot split 10 channels"):
        NormSpec.parse("gn", groups=3).map_layer()(10)
    with pytest.raises(ConfigError, match="position"):
        NormSpec.parse("bn", position="middle")
