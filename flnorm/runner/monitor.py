"""Seeing every reply of a round, failures included, without touching the strategy.

``ReplyLog`` wraps the ServerApp's ``Grid``: strategies call ``send_and_receive`` on it
as usual, and it keeps each round's replies so the recorder can write per-client rows
and count failures: error replies, replies that never came, and updates rejected for
NaN/Inf values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from strategies._state_averaging import rejected_update


@dataclass
class PhaseReplies:
    """Replies to one phase (train or evaluate) of a round."""

    sent: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Messages that got no reply at all (timed out)."""
        return self.sent - len(self.metrics) - len(self.errors)

    @property
    def failures(self) -> int:
        return len(self.errors) + self.missing


class ReplyLog:
    """A ``Grid`` proxy that records replies per message type (train, evaluate)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.phases: dict[str, PhaseReplies] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if messages:
            phase = self.phases.setdefault(messages[0].metadata.message_type, PhaseReplies())
            phase.sent += len(messages)
            for reply in replies:
                if reply.has_error():
                    phase.errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                    continue
                rejected = rejected_update(reply)
                if rejected:  # the strategy leaves it out too (strategies._state_averaging)
                    phase.errors.append(f"node {reply.metadata.src_node_id}: rejected, {rejected}")
                    continue
                for record in reply.content.metric_records.values():
                    row = dict(record)
                    row["node_id"] = reply.metadata.src_node_id
                    phase.metrics.append(row)
        return replies

    def take(self) -> tuple[PhaseReplies, PhaseReplies]:
        """Return and clear the (train, evaluate) replies recorded since the last call."""
        train = self.phases.pop(MessageType.TRAIN, PhaseReplies())
        evaluate = self.phases.pop(MessageType.EVALUATE, PhaseReplies())
        self.phases.clear()
        return train, evaluate
