"""Building blocks shared by the models."""

from __future__ import annotations

from torch import nn

from flnorm.norms import ConvLayer, NormLayer


def activated(layer: nn.Module, norm: nn.Module, position: str) -> nn.Sequential:
    """``layer -> ReLU -> norm`` (``position="after"``) or ``layer -> norm -> ReLU``."""
    if position == "after":
        return nn.Sequential(layer, nn.ReLU(inplace=True), norm)
    return nn.Sequential(layer, norm, nn.ReLU(inplace=True))


def rebuild_convs(module: nn.Module, conv_layer: ConvLayer) -> nn.Module:
    """Replace every ``nn.Conv2d`` in ``module`` by ``conv_layer`` with the same hyperparameters
    and the same initial weights (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            new = conv_layer(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                padding=child.padding, dilation=child.dilation, groups=child.groups,
                bias=child.bias is not None, padding_mode=child.padding_mode,
            )
            new.load_state_dict(child.state_dict(), strict=False)  # its own extra parameters keep their init
            setattr(module, name, new)
        else:
            rebuild_convs(child, conv_layer)
    return module


class Classifier(nn.Module):
    """``head(head_norm(body(x)))``: a feature extractor and a linear head.

    ``features(x)`` returns the penultimate feature ``z`` that the head norm (FN or
    identity) and the linear head consume; diagnostics read it there.
    """

    def __init__(
        self,
        body: nn.Module,
        feature_dim: int,
        num_classes: int,
        head_norm_layer: NormLayer,
        bias: bool,
    ) -> None:
        super().__init__()
        self.body = body
        self.head_norm = head_norm_layer(feature_dim)
        self.head = nn.Linear(feature_dim, num_classes, bias=bias)

    def features(self, x):  # noqa: ANN001, ANN201 - tensors
        return self.body(x)

    def forward(self, x):  # noqa: ANN001, ANN201 - tensors
        return self.head(self.head_norm(self.body(x)))
