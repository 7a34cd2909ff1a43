"""Models by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from flnorm.errors import ConfigError, unknown_choice
from flnorm.models.cnn import paper_cnn
from flnorm.models.mlp import mlp
from flnorm.norms import NormSpec

InputShape = tuple[int, int, int]


def _cnn(norm: NormSpec, num_classes: int, shape: InputShape, bias: bool) -> nn.Module:
    channels, height, width = shape
    if height != width:
        raise ConfigError(f"the paper CNN expects square inputs, got {height}x{width}")
    return paper_cnn(
        num_classes, channels, height, norm.map_layer(), norm.flat_layer(), norm.head_layer(),
        bias=bias, position=norm.position, conv_layer=norm.conv_layer(),
    )


def _mlp(norm: NormSpec, num_classes: int, shape: InputShape, bias: bool) -> nn.Module:
    if norm.body in ("in", "ws"):
        raise ConfigError(f"norm '{norm.body}' acts on feature maps or convolutions; the mlp has none "
                          "(use ln, gn, bn)")
    channels, height, width = shape
    return mlp(
        num_classes, channels * height * width, norm.flat_layer(), norm.head_layer(),
        bias=bias, position=norm.position,
    )


def _resnet18(norm: NormSpec, num_classes: int, shape: InputShape, bias: bool) -> nn.Module:
    from flnorm.models.resnet import cifar_resnet18  # imports torchvision (~1 s): only when asked

    return cifar_resnet18(num_classes, shape[0], norm.map_layer(), norm.head_layer(), bias=bias,
                          conv_layer=norm.conv_layer())


MODELS: dict[str, Callable[[NormSpec, int, InputShape, bool], nn.Module]] = {
    "cnn": _cnn,
    "resnet18": _resnet18,
    "mlp": _mlp,
}


def build_model(
    name: str, norm: NormSpec, num_classes: int, input_shape: InputShape, bias: bool = False
) -> nn.Module:
    """Build model ``name`` for ``input_shape = (C, H, W)`` with the given norm."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise unknown_choice("model", name, tuple(MODELS)) from None
    return factory(norm, num_classes, input_shape, bias)
