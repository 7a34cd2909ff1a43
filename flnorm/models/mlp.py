"""A small multilayer perceptron: in -> 256 -> 128 -> head."""

from __future__ import annotations

from torch import nn

from flnorm.models.layers import Classifier, activated
from flnorm.norms import NormLayer

HIDDEN = (256, 128)


def mlp(
    num_classes: int,
    in_features: int,
    flat_norm_layer: NormLayer,
    head_norm_layer: NormLayer,
    bias: bool = False,
    position: str = "after",
) -> Classifier:
    """Build the MLP; ``flat_norm_layer(C)`` follows every hidden activation."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for hidden in HIDDEN:
        layers.append(activated(nn.Linear(width, hidden, bias=bias), flat_norm_layer(hidden), position))
        width = hidden
    return Classifier(nn.Sequential(*layers), width, num_classes, head_norm_layer, bias)
