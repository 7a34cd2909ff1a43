"""``precisebn``: FedAvg plus a federated PreciseBN statistics round after aggregation.

Only rounds that evaluate (``--eval-every``) run the statistics passes: train-mode BN
never reads the running statistics, only evaluations do.

After the weights are averaged, the server sends the frozen global model to every client
(``query.bn_moments`` messages); each returns ``(n, mean, var)`` of the requested BN
layers' inputs over its training data; the server pools them exactly (law of total
variance) and installs them. Passes repeat this so that layer after layer holds the
population statistics of its input under the eval-time network; an exact run asks for
one layer per pass, in forward order (``flnorm.bn.precise.pass_plan``). The round's
global model, evaluated and sent out next, carries these statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flnorm.bn.moments import Moments, pool_moments
from flnorm.bn.pooling import install_moments
from flnorm.bn.precise import moments_from_arrays, pass_plan
from flnorm.protocol import BN_LAYERS, BN_MOMENTS, INSTRUCTIONS, MODEL, MOMENTS, SERVER_ROUND
from flnorm.records import array_record, numpy_state
from strategies.fedavg import FedAvg, NumpyState, client_order

log = logging.getLogger("flnorm")


class PreciseBN(FedAvg):
    """FedAvg whose BN statistics come from federated PreciseBN passes.

    Parameters
    ----------
    passes
        Statistics passes per round; 0 means one per BN layer (exact; see ``pass_plan``).
    timeout
        Seconds to wait for the clients' statistics.
    """

    def __init__(self, *, passes: int = 0, timeout: float = 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = pass_plan(self.layout.order, passes)
        self.timeout = timeout
        self._grid: Grid | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid = grid
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or not self.layout or not self.evaluates(server_round):
            return arrays, metrics
        state = numpy_state(arrays)
        for layers in self.plan:
            install_moments(state, self.pooled_moments(server_round, state, layers), self.layout)
        return array_record(state), metrics

    def pooled_moments(self, server_round: int, state: NumpyState, layers: tuple[str, ...]) -> dict[str, Moments]:
        """One statistics pass: every client's moments of ``layers`` under ``state``, pooled per layer."""
        assert self._grid is not None, "configure_train must run first"
        instructions = ConfigRecord({SERVER_ROUND: server_round, BN_LAYERS: list(layers)})
        content = RecordDict({MODEL: array_record(state), INSTRUCTIONS: instructions})
        messages = [
            Message(content, dst_node_id=node, message_type=BN_MOMENTS) for node in self._grid.get_node_ids()
        ]
        replies = list(self._grid.send_and_receive(messages, timeout=self.timeout))
        valid = sorted((r for r in replies if not r.has_error()), key=client_order)
        errors = [r.error.reason for r in replies if r.has_error()]
        if not valid:
            raise RuntimeError(f"PreciseBN pass in round {server_round}: no client replied: {errors[:3]}")
        if len(valid) < len(messages):
            log.warning("PreciseBN pass: %d of %d clients replied (%s)", len(valid), len(messages), errors[:3])
        per_client = [moments_from_arrays(numpy_state(r.content[MOMENTS])) for r in valid]
        return {name: pool_moments([c[name] for c in per_client]) for name in layers}
