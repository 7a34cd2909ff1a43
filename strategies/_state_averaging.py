"""Shared aggregation for flnorm's Flower strategies: dtype-safe, order-independent.

Flower's ``aggregate_arrayrecords`` multiplies every array by a float weight, which turns
BatchNorm's int64 ``num_batches_tracked`` into float64 and sums in reply-arrival order.
Here replies are sorted by client id and averaged with ``flnorm.aggregation``; strategies
change *what* is averaged by overriding ``aggregate_states`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from flnorm.aggregation import nonfinite_keys, weighted_average
from flnorm.runner.arrays import numpy_state  # re-exported: strategies decode replies with it

log = logging.getLogger("flnorm")

# Metric keys that identify a reply rather than measure it.
ID_KEYS = ("client", "server-round")
NumpyState = dict[str, np.ndarray]


def client_order(msg: Message) -> tuple[int, int]:
    """Sort key: the client's partition id when reported, then the node id."""
    metrics = next(iter(msg.content.metric_records.values()), {})
    return int(metrics.get("client", -1)), msg.metadata.src_node_id


def rejected_update(msg: Message) -> str | None:
    """Why a train reply must not be averaged in (NaN/Inf arrays), or None if it is sound."""
    for record in msg.content.array_records.values():
        bad = nonfinite_keys(numpy_state(record, copy=False))
        if bad:
            return f"non-finite values in {len(bad)} arrays ({', '.join(bad[:3])})"
    return None


def accepted_replies(server_round: int, replies: Iterable[Message], minimum: int) -> list[Message]:
    """The sound replies sorted by client, or [] (keep the model) if fewer than ``minimum``.

    Error replies and updates with NaN/Inf are left out; the round then averages what
    arrived, provided at least ``minimum`` (the strategy's ``min_train_nodes``) are left.
    """
    sound = []
    for msg in replies:
        if msg.has_error():
            continue
        reason = rejected_update(msg)
        if reason:
            log.warning("round %d: rejected the update of node %d: %s", server_round, msg.metadata.src_node_id, reason)
        else:
            sound.append(msg)
    if len(sound) < minimum:
        log.warning("round %d: %d sound updates, fewer than the minimum %d: the global model is kept",
                    server_round, len(sound), minimum)
        return []
    return sorted(sound, key=client_order)


def mean_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of every numeric metric except ids and the weight itself."""
    weights = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    for record, w in zip(records, weights, strict=True):
        for key, value in next(iter(record.metric_records.values())).items():
            if key in ID_KEYS or key == weighted_by_key or isinstance(value, list):
                continue
            out[key] = out.get(key, 0.0) + float(value) * w / total
    return MetricRecord(out)


def array_record(state: NumpyState) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


class StateAveraging:
    """Mixin for Flower's FedAvg family: replaces ``aggregate_train``."""

    weighted_by_key: str
    train_metrics_aggr_fn: object

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        """The new global state from the clients' states (sorted by client id)."""
        return weighted_average(states, weights)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate client states with ``aggregate_states`` and metrics with the metrics fn."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)  # type: ignore[attr-defined]
        valid = accepted_replies(server_round, valid, self.min_train_nodes)  # type: ignore[attr-defined]
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [numpy_state(next(iter(c.array_records.values()))) for c in contents]
        weights = [next(iter(c.metric_records.values()))[self.weighted_by_key] for c in contents]
        arrays = array_record(self.aggregate_states(states, weights))
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)  # type: ignore[operator]
