"""Message contents shipped to the Ray actors once, however many messages carry them.

A round sends every client the same content (Flower's strategies build one ``RecordDict``
holding the global model and put it in every node's message), and Ray serializes each
call's arguments on their own: ten train messages wrote the same 2.3 MB model (the paper
CNN) into Ray's object store ten times, 3-7 ms of the driver's time each on this machine,
and as much again for the evaluation messages. Here a message whose content holds at
least ``SHARE_MIN_BYTES`` of arrays goes to its actor without its content, and the
content goes once into the object store; Ray hands every actor call that names it the
same stored object, and the actor puts the message back together before the ClientApp
sees it (``ClientActor.run_with_content``): the ClientApp gets the message it would have
got, the same metadata and a content equal to the one sent.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import ray
from flwr.app import Message, RecordDict
from flwr.app.message import make_message

# Ray passes a smaller argument inline with the call (``max_direct_call_object_size``, 100 KiB).
SHARE_MIN_BYTES = 100 * 1024
KEPT = 4  # contents whose object-store copies are kept for messages still to come (a phase needs one)


def array_bytes(content: RecordDict) -> int:
    """Bytes of array data in ``content``."""
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


def with_content(message: Message, content: RecordDict) -> Message:
    """``message`` with another content: a copy of its metadata, ``delivered_at`` included.

    Flower's ``Message()`` resets the ``delivered_at`` of the metadata it is given, and the
    dispatcher delivers a stored message again while that is empty: the original's metadata
    must not be handed to it.
    """
    metadata = copy.copy(message.metadata)
    delivered_at = metadata.delivered_at
    whole = make_message(metadata, content)
    whole.metadata.delivered_at = delivered_at
    return whole


class SharedContents:
    """The object-store copies of the contents of the latest messages, one per content object.

    A content is known by identity: the entry holds the content itself, so its id cannot be
    reused while the entry lives; Flower does not change a message's content once it is sent.
    Calls still in flight keep their stored object alive after its entry is dropped.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[RecordDict, Any]] = {}
        self._lock = threading.Lock()  # Flower's worker threads submit concurrently

    def split(self, message: Message) -> tuple[Message, Any] | None:
        """``(message without its content, reference to the stored content)``; None for a
        message sent as it is (no content, or too little array data to gain from sharing)."""
        if not message.has_content() or array_bytes(message.content) < SHARE_MIN_BYTES:
            return None
        content = message.content
        with self._lock:
            entry = self._entries.get(id(content))
            if entry is None:
                entry = (content, ray.put(content))
                self._entries[id(content)] = entry
                while len(self._entries) > KEPT:
                    del self._entries[next(iter(self._entries))]
        return with_content(message, RecordDict()), entry[1]
