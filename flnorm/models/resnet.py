"""CIFAR-style ResNet-18 built from torchvision's ResNet.

A 3x3 stride-1 stem and no max-pool (the usual choice for 32x32 inputs), the norm layer
injected into every block, including the shortcut's (torchvision names that one
``downsample.1``). Blocks keep torchvision's conv -> norm -> ReLU order. torchvision's
ResNet takes no convolution constructor: a ``conv_layer`` other than ``nn.Conv2d`` is
swapped in for every convolution after construction (``rebuild_convs``).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from flnorm.models.layers import Classifier, rebuild_convs
from flnorm.norms import ConvLayer, NormLayer


def cifar_resnet18(
    num_classes: int,
    in_channels: int,
    norm_layer: NormLayer,
    head_norm_layer: NormLayer,
    bias: bool = False,
    conv_layer: ConvLayer = nn.Conv2d,
) -> Classifier:
    """Build ResNet-18 with a 3x3 stem; ``norm_layer(C)`` everywhere in the body."""
    body = ResNet(BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
    body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    body.maxpool = nn.Identity()
    body.fc = nn.Identity()
    if conv_layer is not nn.Conv2d:
        rebuild_convs(body, conv_layer)
    return Classifier(body, 512, num_classes, head_norm_layer, bias)
