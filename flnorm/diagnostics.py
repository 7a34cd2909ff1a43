"""Feature-collapse diagnostics of the penultimate features (the LN/FN paper's lens).

After local training on one-class data, the penultimate features of vanilla models
collapse (their norm grows along a few directions); LN/FN keep the norm controlled.
We log the mean feature norm and the top singular values of the feature matrix
``Z / sqrt(n)`` (so they do not grow with the number of samples).
"""

from __future__ import annotations

import torch
from torch import nn

TOP_SINGULAR_VALUES = 5


@torch.no_grad()
def feature_diagnostics(model: nn.Module, x: torch.Tensor, k: int = TOP_SINGULAR_VALUES) -> dict[str, float]:
    """``feature_norm`` and ``sv1..svk`` of ``model.features(x)`` in eval mode.

    ``x`` is an already standardized input batch; singular values beyond the feature
    matrix's rank are reported as 0.
    """
    was_training = model.training
    model.eval()
    try:
        z = model.features(x).double()
    finally:
        model.train(was_training)
    z = z.reshape(len(z), -1)
    out = {"feature_norm": float(z.norm(dim=1).mean())}
    singular = torch.linalg.svdvals(z / len(z) ** 0.5)
    for i in range(k):
        out[f"sv{i + 1}"] = float(singular[i]) if i < len(singular) else 0.0
    return out
