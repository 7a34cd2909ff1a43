"""Models: shapes, norm injection, bias removal, FN head, registry errors."""

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flnorm.errors import ConfigError
from flnorm.models import MODELS, build_model
from flnorm.models.cnn import cnn_flat_dim
from flnorm.norms import FeatureNorm, NormSpec


def test_paper_cnn_widths_at_32x32():
    model = build_model("cnn", NormSpec.parse("none"), 10, (3, 32, 32))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1600, 384), (384, 192), (192, 10)]
    assert cnn_flat_dim(28) == 1024


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("norm", ["none", "bn", "gn", "ln", "fn", "bn+fn"])
def test_forward_shapes(name, norm):
    shape = (3, 32, 32) if name == "resnet18" else (1, 28, 28)
    model = build_model(name, NormSpec.parse(norm), 10, shape)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    assert isinstance(model.head_norm, FeatureNorm) == norm.endswith("fn")


def test_cnn_bias_free_by_default_and_with_bias():
    free = build_model("cnn", NormSpec.parse("none"), 10, (1, 28, 28))
    assert not any(n.endswith(".bias") for n, _ in free.named_parameters())
    biased = build_model("cnn", NormSpec.parse("none"), 10, (1, 28, 28), bias=True)
    assert sum(n.endswith(".bias") for n, _ in biased.named_parameters()) == 5


def test_cnn_norm_after_each_activation_and_before_option():
    model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert [b.num_features for b in bns] == [64, 64, 384, 192]
    first = model.body[0]
    assert isinstance(first[1], nn.ReLU) and isinstance(first[2], nn.BatchNorm2d)
    before = build_model("cnn", NormSpec.parse("bn", position="before"), 10, (1, 28, 28)).body[0]
    assert isinstance(before[1], nn.BatchNorm2d) and isinstance(before[2], nn.ReLU)


def test_resnet18_cifar_stem_and_norm_everywhere():
    model = build_model("resnet18", NormSpec.parse("bn"), 10, (3, 32, 32))
    assert model.body.conv1.kernel_size == (3, 3) and model.body.conv1.stride == (1, 1)
    assert isinstance(model.body.maxpool, nn.Identity)
    bns = {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert len(bns) == 20  # 1 stem + 16 in blocks + 3 shortcuts
    assert "body.layer2.0.downsample.1" in bns  # the name with no "bn" in it
    gn = build_model("resnet18", NormSpec.parse("gn", groups=2), 10, (3, 32, 32))
    assert not any(isinstance(m, _BatchNorm) for m in gn.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == 20


def test_model_registry_rejects_unknown_and_bad_combinations():
    with pytest.raises(ConfigError, match="valid choices: cnn, resnet18, mlp"):
        build_model("vgg", NormSpec.parse("bn"), 10, (1, 28, 28))
    with pytest.raises(ConfigError, match="mlp"):
        build_model("mlp", NormSpec.parse("in"), 10, (1, 28, 28))
