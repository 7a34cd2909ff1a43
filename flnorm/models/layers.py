"""Building blocks shared by the models."""

from __future__ import annotations

from torch import nn

from flnorm.norms import NormLayer


def activated(layer: nn.Module, norm: nn.Module, position: str) -> nn.Sequential:
    """``layer -> ReLU -> norm`` (``position="after"``) or ``layer -> norm -> ReLU``."""
    if position == "after":
        return nn.Sequential(layer, nn.ReLU(inplace=True), norm)
    return nn.Sequential(layer, norm, nn.ReLU(inplace=True))


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
