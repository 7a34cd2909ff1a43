"""``fedavg``: Flower's FedAvg made BatchNorm-aware; the base of every flnorm strategy.

What it changes in Flower's FedAvg, and why:

- **Averaging keeps dtypes and ignores arrival order.** Flower multiplies every array by a
  float weight (BatchNorm's int64 ``num_batches_tracked`` becomes float64) and sums in
  reply-arrival order. Here sound replies are sorted by client id and averaged with
  ``flnorm.aggregation.weighted_average`` (float64 sums, integer counters exact).
  Subclasses change *what* is averaged by overriding ``aggregate_states`` only.
- **Unsound updates are left out**: error replies and updates holding NaN/Inf; a round
  with fewer than ``min_train_nodes`` sound updates keeps the model.
- **Keys that stay on the client** (``local_keys``: FedBN, SiloBN) are stripped from every
  message sent and must not come back; the server keeps its copy so the global
  ArrayRecord stays a whole state dict.
- **Evaluation on scheduled rounds only** (``evaluates``, from ``--eval-every``).

As the ``fedavg`` strategy it is plain FedAvg: every tensor, BN running statistics
included, becomes the sample-weighted mean of the clients' (the naive baseline for BN).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from flnorm.aggregation import weighted_average
from flnorm.bn.layout import BNLayout
from flnorm.protocol import CLIENT, NUM_EXAMPLES, SERVER_ROUND
from flnorm.records import array_record, decode, nonfinite_update, numpy_state

log = logging.getLogger("flnorm")

NumpyState = dict[str, np.ndarray]
# Metric keys that identify a reply rather than measure it.
ID_KEYS = (CLIENT, SERVER_ROUND)


def every_round(server_round: int) -> bool:
    return True


def client_order(msg: Message) -> tuple[int, int]:
    """Sort key: the client's partition id when reported, then the node id."""
    metrics = next(iter(msg.content.metric_records.values()), {})
    return int(metrics.get(CLIENT, -1)), msg.metadata.src_node_id


def mean_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of every numeric metric except ids and the weight, in client order."""
    records = sorted(records, key=lambda r: int(next(iter(r.metric_records.values())).get(CLIENT, -1)))
    weights = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    for record, w in zip(records, weights, strict=True):
        for key, value in next(iter(record.metric_records.values())).items():
            if key in ID_KEYS or key == weighted_by_key or isinstance(value, list):
                continue
            out[key] = out.get(key, 0.0) + float(value) * w / total
    return MetricRecord(out)


class FedAvg(FlowerFedAvg):
    """Flower's FedAvg with BN-aware, dtype-safe, deterministic aggregation.

    Parameters
    ----------
    layout
        The model's BN layers (found by module type).
    batch_size
        The clients' local batch size (BN statistics pooling needs it).
    evaluates
        Which rounds evaluate (``ExperimentConfig.evaluates``); default every round.
    local_keys
        State keys that never leave the clients.
    **kwargs
        Flower FedAvg arguments.
    """

    def __init__(
        self, *, layout: BNLayout, batch_size: int, evaluates: Callable[[int], bool] = every_round,
        local_keys: frozenset[str] = frozenset(), **kwargs: Any,
    ) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", mean_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", mean_metrics)
        kwargs.setdefault("weighted_by_key", NUM_EXAMPLES)
        super().__init__(**kwargs)
        self.layout = layout
        self.batch_size = batch_size
        self.evaluates = evaluates
        self.local_keys = local_keys
        self.sent: NumpyState | None = None  # the global state of this round's train messages
        self.server_round = 0
        self._held: NumpyState = {}
        self._order: list[str] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.server_round = server_round
        self.sent = numpy_state(arrays, copy=False)
        return super().configure_train(server_round, self._outgoing(arrays), config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.evaluates(server_round):
            return []  # Flower's loop then moves on at once
        return super().configure_evaluate(server_round, self._outgoing(arrays), config, grid)

    def _outgoing(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` less ``local_keys``; the server's copy of those is held back."""
        if not self.local_keys:
            return arrays
        self._order = list(arrays.keys())
        self._held = {k: decode(a) for k, a in arrays.items() if k in self.local_keys}
        return ArrayRecord({k: a for k, a in arrays.items() if k not in self.local_keys})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the sound replies (sorted by client) with ``aggregate_states``."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        valid = self.sound_replies(server_round, valid)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [numpy_state(next(iter(c.array_records.values()))) for c in contents]
        weights = [next(iter(c.metric_records.values()))[self.weighted_by_key] for c in contents]
        leaked = set(states[0]) & self.local_keys
        if leaked:
            raise ValueError(f"clients sent keys that must stay local: {sorted(leaked)[:3]}")
        state = self.aggregate_states(states, weights)
        if self.local_keys:
            state = {k: {**state, **self._held}[k] for k in self._order}
        return array_record(state), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        """The new global state from the clients' (sorted by client id): the weighted mean."""
        return weighted_average(states, weights)

    def sound_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies to average, sorted by client; [] (keep the model) if fewer than
        ``min_train_nodes``. Errors and updates holding NaN/Inf are left out."""
        sound = []
        for msg in replies:
            if msg.has_error():
                continue
            reason = nonfinite_update(msg)
            if reason:
                log.warning("round %d: rejected the update of node %d: %s",
                            server_round, msg.metadata.src_node_id, reason)
            else:
                sound.append(msg)
        if len(sound) < self.min_train_nodes:
            log.warning("round %d: %d sound updates, fewer than the minimum %d: the global model is kept",
                        server_round, len(sound), self.min_train_nodes)
            return []
        return sorted(sound, key=client_order)
