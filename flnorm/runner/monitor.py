"""The ServerApp's view of the Grid: the experiment attached, every reply seen.

``ReplyLog`` wraps the ServerApp's ``Grid``: strategies call ``send_and_receive`` on it
as usual. It attaches the run's experiment record (``flnorm.protocol.EXPERIMENT``) to
every message it sends, so that no strategy has to carry the experiment in its
instructions, and it keeps each round's replies so the recorder can write per-client
rows and count failures: error replies, replies that never came, and updates rejected
for NaN/Inf values.

Against a deployed SuperLink, Flower's grid waits 3 s between two pulls for replies
(``GrpcGrid``/``HttpGrid.send_and_receive``): up to 3 s lost per phase, twice a round.
Given ``poll``, ``ReplyLog`` pushes and pulls through the grid's ``push_messages`` and
``pull_messages`` itself, every ``poll`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from flnorm.protocol import EXPERIMENT, PLACEMENT
from flnorm.records import nonfinite_update


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
    """A ``Grid`` proxy that attaches ``experiment`` to every message and records replies
    per message type (train, evaluate); with ``poll``, it pulls for replies every ``poll``
    seconds instead of leaving the wait to the grid."""

    def __init__(self, grid: Grid, experiment: ConfigRecord | None = None, poll: float | None = None) -> None:
        self._grid = grid
        self.experiment = experiment
        self.poll = poll
        self.phases: dict[str, PhaseReplies] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if self.experiment is not None:
            for msg in messages:
                msg.content[EXPERIMENT] = self.experiment
        if self.poll is None:
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        else:
            replies = self._exchange(messages, timeout)
        if messages:
            phase = self.phases.setdefault(messages[0].metadata.message_type, PhaseReplies())
            phase.sent += len(messages)
            for reply in replies:
                if reply.has_error():
                    phase.errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                    continue
                rejected = nonfinite_update(reply)
                if rejected:  # the strategy leaves it out too (strategies.fedavg)
                    phase.errors.append(f"node {reply.metadata.src_node_id}: rejected, {rejected}")
                    continue
                placement = dict(reply.content[PLACEMENT]) if PLACEMENT in reply.content else {}
                for record in reply.content.metric_records.values():
                    row = {**dict(record), **placement}
                    row["node_id"] = reply.metadata.src_node_id
                    phase.metrics.append(row)
        return replies

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Push ``messages``, then pull until every reply is in or ``timeout`` has passed."""
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            pulled = list(self._grid.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(msg.metadata.reply_to_message_id for msg in pulled)
            if waiting and (end is None or time.monotonic() < end):
                time.sleep(self.poll)
            elif waiting:
                break
        return replies

    def take(self) -> tuple[PhaseReplies, PhaseReplies]:
        """Return and clear the (train, evaluate) replies recorded since the last call."""
        train = self.phases.pop(MessageType.TRAIN, PhaseReplies())
        evaluate = self.phases.pop(MessageType.EVALUATE, PhaseReplies())
        self.phases.clear()
        return train, evaluate
