"""How BN layers normalize: batch statistics at evaluation, frozen statistics in training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from flnorm.bn.layout import bn_modules


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate with each batch's own statistics; running statistics stay untouched."""
    saved = []
    for m in bn_modules(model).values():
        saved.append((m, m.training, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield model
    finally:
        for m, training, momentum, count in saved:
            m.train(training)
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def frozen_statistics(model: nn.Module) -> nn.Module:
    """Put every BN layer in eval mode (call after ``model.train()``).

    Training then normalizes with the running (global) statistics and leaves them as
    they are; the affine parameters still learn. FixBN's second phase.
    """
    for m in bn_modules(model).values():
        m.eval()
    return model
