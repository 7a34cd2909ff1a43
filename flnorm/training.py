"""Local training and evaluation in plain PyTorch.

The unit of local work is a number of SGD *steps* (batches), as in the LN/FN paper.
Batches are drawn from a stream of concatenated random permutations of the client's
data, so every batch is full (``min(batch_size, n)`` samples) and the stream is a pure
function of the generator's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd

from flnorm.agc import adaptive_clip_, clipped_parameters
from flnorm.bn.modes import batch_statistics, frozen_statistics
from flnorm.precision import autocast, autocast_dtype, norms_in_fp32

# Evaluation chunk: 128 samples keep the paper CNN's activations in cache (1,000 images in
# one batch take 2.7x longer on this CPU); with test-batch BN statistics the batch is the
# statistics' sample, so that mode keeps up to 1,000 samples per batch.
EVAL_BATCH = 128
FP16_INIT_SCALE = 2.0**10  # see _train_fp16
BN_STATS_BATCH = 1000


class Standardize:
    """Map uint8 images to ``(x / 255 - mean) / std`` on the images' device.

    With ``channels_last`` the result is in ``torch.channels_last`` memory format (the
    fast layout for convolutions on CPU/oneDNN and on CUDA); values are unchanged.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool = False
    ) -> None:
        shape = (1, len(mean), 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(shape).to(device)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(shape).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32, memory_format=self.memory_format) * self.scale - self.shift


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``[steps, b]`` sample indices, ``b = min(batch_size, n)``, from chained permutations."""
    b = min(batch_size, n)
    needed = steps * b
    perms = [torch.randperm(n, generator=generator) for _ in range(-(-needed // n))]
    return torch.cat(perms)[:needed].view(steps, b)


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss over the local steps and the samples they used."""

    loss: float
    steps: int
    samples: int


@dataclass(frozen=True)
class EvalResult:
    """Summed loss and correct predictions over ``n`` samples; with groups (e.g. domains),
    the samples and correct predictions of each group."""

    loss_sum: float
    correct: int
    n: int
    group_n: tuple[int, ...] = ()
    group_correct: tuple[int, ...] = ()

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    transform: Standardize,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    bn_frozen: bool = False,
    precision: str = "fp32",
    agc_clip: float = 0.0,
) -> TrainResult:
    """Run ``steps`` SGD steps on ``(x, y)`` (already on the model's device).

    With ``proximal_mu > 0`` the FedProx term ``mu/2 * ||w - w_start||^2`` over the
    trainable parameters is added to the loss. With ``bn_frozen`` every BN layer
    normalizes with its running statistics and leaves them unchanged (FixBN).
    ``precision`` bf16/fp16 autocasts the forward pass and the loss (``flnorm.precision``);
    the proximal term and the update stay in fp32. With ``agc_clip > 0`` the gradients are
    clipped adaptively (``flnorm.agc``, the final classifier excepted) before each step.
    """
    if autocast_dtype(precision) == torch.float16:
        return _train_fp16(model, x, y, transform, steps=steps, batch_size=batch_size, lr=lr,
                           generator=generator, momentum=momentum, weight_decay=weight_decay,
                           proximal_mu=proximal_mu, bn_frozen=bn_frozen, agc_clip=agc_clip)
    model.train()
    if bn_frozen:
        frozen_statistics(model)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    momentum_buffers: list[torch.Tensor | None] = [None] * len(params)
    clipped = clipped_parameters(model) if agc_clip > 0 else []
    index = batch_indices(len(y), batch_size, steps, generator).to(x.device)
    total = torch.zeros((), device=x.device)
    mixed = precision != "fp32"
    for batch in index:
        with autocast(precision, x.device), norms_in_fp32(model, mixed):
            logits = model(transform(x[batch]))
            loss = F.cross_entropy(logits, y[batch])
        total += loss.detach()
        if anchor is not None:
            loss = loss + 0.5 * proximal_mu * sum(
                (p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)
            )
        for p in params:
            p.grad = None
        loss.backward()
        if clipped:
            adaptive_clip_(clipped, agc_clip)
        sgd_step(params, momentum_buffers, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return TrainResult(loss=float(total) / steps, steps=steps, samples=int(index.numel()))


def _train_fp16(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, transform: Standardize, *, steps: int,
    batch_size: int, lr: float, generator: torch.Generator, momentum: float, weight_decay: float,
    proximal_mu: float, bn_frozen: bool, agc_clip: float,
) -> TrainResult:
    """``train_local`` in fp16: ``torch.optim.SGD`` under a ``GradScaler`` (a step whose
    gradients overflow is skipped and the scale lowered, as PyTorch's AMP recipe does).

    Each round starts a fresh scaler at ``FP16_INIT_SCALE``: PyTorch's default, 2**16,
    overflowed the first steps of every round on the paper CNN (skipped: 10 local steps
    ended at loss 1.12 instead of fp32's 1.02 under BN, 1.05 instead of 0.85 under FN);
    2**10 skipped none (1.016 and 0.846).
    """
    model.train()
    if bn_frozen:
        frozen_statistics(model)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(x.device.type, init_scale=FP16_INIT_SCALE)
    clipped = clipped_parameters(model) if agc_clip > 0 else []
    index = batch_indices(len(y), batch_size, steps, generator).to(x.device)
    total = torch.zeros((), device=x.device)
    for batch in index:
        with autocast("fp16", x.device), norms_in_fp32(model):
            loss = F.cross_entropy(model(transform(x[batch])), y[batch])
        total += loss.detach().float()
        if anchor is not None:
            loss = loss.float() + 0.5 * proximal_mu * sum(
                (p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clipped:
            scaler.unscale_(optimizer)  # clip the true gradients; step() then skips unscaling
            adaptive_clip_(clipped, agc_clip)
        scaler.step(optimizer)
        scaler.update()
    return TrainResult(loss=float(total) / steps, steps=steps, samples=int(index.numel()))


@torch.no_grad()
def sgd_step(
    params: list[torch.Tensor], momentum_buffers: list[torch.Tensor | None], *,
    lr: float, momentum: float, weight_decay: float,
) -> None:
    """One ``torch.optim.SGD`` step through its functional form, ``torch.optim.sgd.sgd``.

    Same arithmetic as ``torch.optim.SGD(params, lr, momentum, weight_decay).step()``
    (parameters without a gradient skipped; ``momentum_buffers`` carried between calls),
    without the optimizer object, whose constructor imports ``torch._dynamo`` on first
    use: 1.3-2.6 s at the start of every Ray actor and test process.
    """
    live = [i for i, p in enumerate(params) if p.grad is not None]
    buffers = [momentum_buffers[i] for i in live]
    sgd(
        [params[i] for i in live], [params[i].grad for i in live], buffers,
        weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=0.0, nesterov=False,
        maximize=False,
    )
    for i, buf in zip(live, buffers, strict=True):
        momentum_buffers[i] = buf


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    transform: Standardize,
    batch_size: int | None = None,
    bn_batch_stats: bool = False,
    groups: torch.Tensor | None = None,
    num_groups: int = 0,
) -> EvalResult:
    """Loss and accuracy of ``model`` in eval mode.

    BN layers use their running statistics, or with ``bn_batch_stats`` the statistics of
    each evaluation batch (of up to ``batch_size`` samples, default ``BN_STATS_BATCH``;
    running statistics untouched). Otherwise batches of ``EVAL_BATCH`` samples by default.
    ``groups`` (each sample's group index, below ``num_groups``) adds per-group counts.
    """
    model.eval()
    if bn_batch_stats:
        with batch_statistics(model):
            return _accumulate(model, x, y, transform, batch_size or BN_STATS_BATCH, groups, num_groups)
    return _accumulate(model, x, y, transform, batch_size or EVAL_BATCH, groups, num_groups)


def _accumulate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, transform: Standardize, batch_size: int,
    groups: torch.Tensor | None = None, num_groups: int = 0,
) -> EvalResult:
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    hits = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    for start in range(0, len(y), batch_size):
        xb, yb = transform(x[start : start + batch_size]), y[start : start + batch_size]
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        hits[start : start + batch_size] = logits.argmax(dim=1) == yb
    if groups is None:
        return EvalResult(loss_sum=float(loss_sum), correct=int(hits.sum()), n=len(y))
    group_n = torch.bincount(groups, minlength=num_groups)
    group_correct = torch.bincount(groups[hits], minlength=num_groups)
    return EvalResult(loss_sum=float(loss_sum), correct=int(hits.sum()), n=len(y),
                      group_n=tuple(group_n.tolist()), group_correct=tuple(group_correct.tolist()))
