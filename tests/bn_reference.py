"""Centralized reference for BN statistics, written independently of flnorm.bn."""

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def layerwise_population_stats(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Layer by layer in eval mode: each BN gets the mean and unbiased variance of its
    input over all of ``x`` (one batch), installed before the next layer is measured.

    Returns ``{name: (mean, var)}`` in float64; ``model``'s BN buffers are overwritten.
    """
    model.eval()
    out = {}
    for name, bn in ((n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)):
        seen = []
        hook = bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().double()))
        with torch.no_grad():
            model(x)
        hook.remove()
        flat = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)
        out[name] = (flat.mean(1), flat.var(1, unbiased=True))
        bn.running_mean.copy_(out[name][0])
        bn.running_var.copy_(out[name][1])
    return out
