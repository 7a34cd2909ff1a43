"""Keys that never leave the client (FedBN, SiloBN).

The server strips them from every message it sends and aggregates what comes back; it
keeps its own copy of them only so that the global ArrayRecord stays a whole state dict
(for the server-side evaluation, which then uses test-batch BN statistics).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from flnorm.runner.arrays import decode
from strategies._state_averaging import NumpyState


class KeepLocal:
    """Mixin: ``local_keys`` are neither sent nor received."""

    local_keys: frozenset[str] = frozenset()

    def _shared(self, arrays: ArrayRecord) -> ArrayRecord:
        self._order = list(arrays.keys())
        self._held = {k: decode(a) for k, a in arrays.items() if k in self.local_keys}
        return ArrayRecord({k: a for k, a in arrays.items() if k not in self.local_keys})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, self._shared(arrays), config, grid)  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round, self._shared(arrays), config, grid)  # type: ignore[misc]

    def aggregate_states(self, states: Sequence[NumpyState], weights: Sequence[float]) -> NumpyState:
        leaked = set(states[0]) & self.local_keys
        if leaked:
            raise ValueError(f"clients sent keys that must stay local: {sorted(leaked)[:3]}")
        shared = super().aggregate_states(states, weights)  # type: ignore[misc]
        merged = {**shared, **self._held}
        return {k: merged[k] for k in self._order}
