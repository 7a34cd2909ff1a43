"""Server optimizers (FedAdam, FedYogi) that step trainable parameters only.

Flower's FedOpt family applies the optimizer to every array, BN running statistics and
the int64 counter included. Here Flower's update runs on the trainable parameters alone
(replies sorted by client id), and the buffers are aggregated like ``fedavg-pooled``:
statistics pooled with the law of total variance, counters summed as integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flnorm.bn.layout import BNLayout
from flnorm.bn.pooling import average_with_pooled_stats
from flnorm.runner.arrays import decode
from strategies._state_averaging import accepted_replies, array_record, numpy_state


class TrainableOnly:
    """Mixin placed before Flower's FedAdam/FedYogi."""

    current_arrays: dict[str, np.ndarray] | None
    weighted_by_key: str
    # Server state across rounds that a checkpoint must keep (Flower's Adam moments).
    checkpoint_attrs = ("m_t", "v_t")

    def __init__(self, *, layout: BNLayout, batch_size: int, trainable_keys: frozenset[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = layout
        self.batch_size = batch_size
        self.trainable_keys = trainable_keys

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = accepted_replies(server_round, replies, self.min_train_nodes)  # type: ignore[attr-defined]
        if not valid or self.current_arrays is None:
            return super().aggregate_train(server_round, valid)  # type: ignore[misc]
        records = [next(iter(r.content.array_records.values())) for r in valid]
        weights = [int(next(iter(r.content.metric_records.values()))[self.weighted_by_key]) for r in valid]
        buffer_keys = [k for k in records[0] if k not in self.trainable_keys]
        buffers = average_with_pooled_stats(
            [{k: decode(rec[k]) for k in buffer_keys} for rec in records], weights, self.layout,
            self.batch_size, self.current_arrays,
        ) if buffer_keys else {}
        for rec in records:  # Flower's optimizer sees the trainable parameters only
            for k in buffer_keys:
                del rec[k]
        full = self.current_arrays
        self.current_arrays = {k: v for k, v in full.items() if k in self.trainable_keys}
        try:
            ordered = valid + [r for r in replies if r.has_error()]
            arrays, metrics = super().aggregate_train(server_round, ordered)  # type: ignore[misc]
        finally:
            self.current_arrays = full
        if arrays is None:
            return None, metrics
        stepped = numpy_state(arrays)
        merged = {
            k: (stepped[k].astype(v.dtype) if k in stepped else buffers[k]) for k, v in full.items()
        }
        return array_record(merged), metrics
