"""Mixed precision for local training: autocast the forward pass and loss, keep norms in fp32.

``bf16`` and ``fp16`` run convolutions and linear layers in 16 bits under
``torch.autocast`` (CPU: bf16 uses AMX/AVX-512 where present; CUDA: either). Everything
that defines the model's statistics stays in fp32: the parameters and BN running
statistics themselves (autocast never changes a tensor's dtype), and the normalization
layers' computation, whose inputs are cast back to fp32 (``norms_in_fp32``). ``fp16``
also scales the loss (``torch.amp.GradScaler``) so small gradients do not flush to zero.
Evaluation, PreciseBN moments and aggregation run in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import ContextManager

import torch
from torch import nn

from flnorm.errors import unknown_choice
from flnorm.norms import FeatureNorm

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FeatureNorm)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The 16-bit dtype of ``precision`` (None for fp32); unknown names are refused."""
    if precision not in PRECISIONS:
        raise unknown_choice("precision", precision, tuple(PRECISIONS))
    return PRECISIONS[precision]


def autocast(precision: str, device: torch.device) -> ContextManager[object]:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def native_on_cpu(precision: str) -> bool:
    """Whether this CPU runs ``precision`` natively (oneDNN's bf16 needs AVX512-BF16 or AMX)."""
    if precision != "bf16":
        return precision == "fp32"
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _to_fp32(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


@contextmanager
def norms_in_fp32(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside, every normalization layer of ``model`` (found by module type) gets fp32 input.

    Autocast leaves norm ops in the dtype of their input (CPU) or runs some in fp32
    (CUDA); an fp32 input makes both compute means, variances and the FN norm in fp32.
    """
    if not enabled:
        yield
        return
    hooks = [m.register_forward_pre_hook(_to_fp32) for m in model.modules() if isinstance(m, NORM_TYPES)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
