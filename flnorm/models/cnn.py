"""The CNN of the LN/FN label-shift paper (TMLR 2024).

conv5x5-64 -> pool -> conv5x5-64 -> pool -> fc 1600->384 -> fc 384->192 -> head 192->C,
a norm after every activation (or before it), biases optional. ``1600`` is for 32x32
inputs; other sizes get ``64 * s * s`` with ``s`` the spatial size after the two blocks.
"""

from __future__ import annotations

from torch import nn

from flnorm.models.layers import Classifier, activated
from flnorm.norms import ConvLayer, NormLayer


def cnn_flat_dim(image_size: int) -> int:
    """Width of the flattened feature map for a square input of ``image_size``."""
    s = image_size
    for _ in range(2):
        s = (s - 4) // 2  # 5x5 valid conv, then 2x2 max-pool
    if s < 1:
        raise ValueError(f"input of {image_size}x{image_size} is too small for the paper CNN")
    return 64 * s * s


def paper_cnn(
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm_layer: NormLayer,
    flat_norm_layer: NormLayer,
    head_norm_layer: NormLayer,
    bias: bool = False,
    position: str = "after",
    conv_layer: ConvLayer = nn.Conv2d,
) -> Classifier:
    """Build the paper CNN.

    Parameters
    ----------
    num_classes, in_channels, image_size
        Output classes and input shape ``[in_channels, image_size, image_size]``.
    norm_layer
        ``norm(C)`` for the conv feature maps.
    flat_norm_layer
        ``norm(C)`` for the flat hidden layers (fc 384 and fc 192).
    head_norm_layer
        ``norm(d)`` for the penultimate feature (FN or identity).
    bias
        Whether convs and linears carry biases (the paper removes all of them).
    position
        ``"after"`` or ``"before"`` the ReLU.
    conv_layer
        The convolution constructor (``nn.Conv2d``'s signature).
    """
    body = nn.Sequential(
        activated(conv_layer(in_channels, 64, 5, bias=bias), norm_layer(64), position),
        nn.MaxPool2d(2),
        activated(conv_layer(64, 64, 5, bias=bias), norm_layer(64), position),
        nn.MaxPool2d(2),
        nn.Flatten(),
        activated(nn.Linear(cnn_flat_dim(image_size), 384, bias=bias), flat_norm_layer(384), position),
        activated(nn.Linear(384, 192, bias=bias), flat_norm_layer(192), position),
    )
    return Classifier(body, 192, num_classes, head_norm_layer, bias)
