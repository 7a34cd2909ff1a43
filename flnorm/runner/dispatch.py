"""Event-driven message flow for Flower's in-process simulation engine.

Flower 1.41 moves messages between the ServerApp and the Ray actors by polling, twice a
phase:

- **Instructions.** A thread (``vce_api.add_messages_to_queue``) asks the LinkState, every
  0.1 s, for one message per node: ``get_message_ins(node_id, limit=1)`` walks every stored
  message for every node and checks each one's expiry and federation on the way, so a poll
  costs O(nodes x messages).
- **Replies.** ``InMemoryGrid.send_and_receive`` pulls the replies, then sleeps
  ``pull_interval`` (0.1 s) until all are in.

On the paper CNN's 1-2 s rounds that is up to 0.4 s of waiting a round; with 1,000 nodes a
poll walks 100 sampled messages 1,000 times.

With ``changes()`` applied (``flnorm.runner.engine``), both sides wake on events instead. The in-memory LinkState sets an
event when it stores an instruction and another when it stores a reply; the dispatcher
walks the store once per wake-up with Flower's rules (at most one undelivered message per
node, expired messages and messages outside the run's federation dropped by the state's
own check, ``delivered_at`` stamped), and ``send_and_receive`` pulls once per stored
reply. Both still re-check every ``FALLBACK_WAIT`` seconds, for the stop flag and for
expiries. A LinkState other than the in-memory one keeps Flower's loops.

The changes also tie each run's LinkState to the engine's stop event (``f_stop``, set
when the engine ends: finished, crashed or interrupted). Flower's reply wait never looks
at it, so a ServerApp whose engine died waited ``round_timeout`` for replies that could
not come; here the wait raises ``EngineStopped`` within ``FALLBACK_WAIT``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.server.superlink.fleet import vce
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.superlink.grid import InMemoryGrid
from flwr.supercore.date import now

from flnorm.runner.stopping import EngineStopped, engine

FALLBACK_WAIT = 0.1
_flower_loop = vce_api.add_messages_to_queue
_flower_store_ins = InMemoryLinkState.store_message_ins
_flower_store_res = InMemoryLinkState.store_message_res
_flower_send_and_receive = InMemoryGrid.send_and_receive
_flower_start_vce = vce.start_vce


class StateSignals:
    """Events an in-memory LinkState sets when it stores an instruction or a reply."""

    def __init__(self) -> None:
        self.instructions = threading.Event()
        self.replies = threading.Event()
        self.engine_stop: threading.Event | None = None  # the engine's f_stop, once it starts


def signals(state: InMemoryLinkState) -> StateSignals:
    """The signals of ``state``, attached on first use."""
    return state.__dict__.setdefault("_flnorm_signals", StateSignals())  # atomic in CPython


def _store_message_ins(self: InMemoryLinkState, message: Message) -> str | None:
    msg_id = _flower_store_ins(self, message)
    signals(self).instructions.set()
    return msg_id


def _store_message_res(self: InMemoryLinkState, message: Message) -> str | None:
    msg_id = _flower_store_res(self, message)
    signals(self).replies.set()
    return msg_id


def engine_stopped(grid: object) -> bool:
    """Whether ``grid`` is an in-process simulation's grid whose engine has ended."""
    state = getattr(grid, "state", None)
    if not isinstance(state, InMemoryLinkState):
        return False
    stop = signals(state).engine_stop
    return stop is not None and stop.is_set()


def _start_vce(*args: Any, **kwargs: Any) -> None:
    """``vce.start_vce`` that ties the run's LinkState to the engine's stop event, and lets
    a stop signal set that event from any thread (``stopping.engine``)."""
    factory, f_stop = kwargs.get("state_factory"), kwargs.get("f_stop")
    if factory is None or f_stop is None:
        _flower_start_vce(*args, **kwargs)
        return
    state = factory.state()
    if isinstance(state, InMemoryLinkState):
        signals(state).engine_stop = f_stop
    with engine(f_stop):
        _flower_start_vce(*args, **kwargs)


def pending_messages(state: InMemoryLinkState, nodes: Iterable[int]) -> list[Message]:
    """Take at most one undelivered message per node in ``nodes``; mark them delivered."""
    wanted = set(nodes)
    with state.lock:
        store: dict[str, Message] = state.message_ins_store
        candidates = {
            msg_id for msg_id, msg in store.items()
            if msg.metadata.delivered_at == "" and msg.metadata.dst_node_id in wanted
        }
        if not candidates:
            return []
        state._check_stored_messages(candidates)  # drops expired ones
        picked: dict[int, Message] = {}
        for msg_id, msg in store.items():  # insertion order: oldest first per node
            if msg_id in candidates and msg.metadata.dst_node_id not in picked:
                picked[msg.metadata.dst_node_id] = msg
    delivered_at = now().isoformat()
    for msg in picked.values():
        msg.metadata.delivered_at = delivered_at
    return list(picked.values())


def add_messages_to_queue(
    state: object, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Drop-in for ``vce_api.add_messages_to_queue``: one walk of the store per stored instruction."""
    if not isinstance(state, InMemoryLinkState):
        _flower_loop(state, queue, nodes_mapping, f_stop)
        return
    nodes = frozenset(nodes_mapping)
    stored = signals(state).instructions
    while not f_stop.is_set():
        stored.clear()  # before the walk: an instruction stored during it wakes the next wait
        for msg in pending_messages(state, nodes):
            queue.put(msg)
        stored.wait(FALLBACK_WAIT)


def send_and_receive(
    self: InMemoryGrid, messages: Iterable[Message], *, timeout: float | None = None
) -> list[Message]:
    """Drop-in for ``InMemoryGrid.send_and_receive``: pulls when a reply is stored."""
    if not isinstance(self.state, InMemoryLinkState):
        return list(_flower_send_and_receive(self, messages, timeout=timeout))
    stored = signals(self.state).replies
    msg_ids = set(self.push_messages(messages))
    end_time = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while msg_ids:
        if engine_stopped(self):
            raise EngineStopped(f"the simulation engine ended with {len(msg_ids)} replies outstanding")
        stored.clear()  # before the pull: a reply stored during it wakes the next wait
        pulled = self.pull_messages(msg_ids)
        replies.extend(pulled)
        msg_ids.difference_update(msg.metadata.reply_to_message_id for msg in pulled)
        left = FALLBACK_WAIT if end_time is None else end_time - time.monotonic()
        if msg_ids and left > 0:
            stored.wait(min(left, FALLBACK_WAIT))
        elif msg_ids:
            break
    return replies


def changes() -> list[tuple[object, str, object]]:
    """``(owner, attribute, replacement)`` for each function of Flower this module replaces
    (applied and undone by ``flnorm.runner.engine``)."""
    return [
        (InMemoryLinkState, "store_message_ins", _store_message_ins),
        (InMemoryLinkState, "store_message_res", _store_message_res),
        (InMemoryGrid, "send_and_receive", send_and_receive),
        (vce_api, "add_messages_to_queue", add_messages_to_queue),
        (vce, "start_vce", _start_vce),
    ]
