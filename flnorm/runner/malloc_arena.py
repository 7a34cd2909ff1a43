"""One glibc malloc arena for the process that runs the server.

glibc gives a thread that allocates its own arena (up to eight per core), and a thread's
arena grows in heaps of up to 64 MiB that it unmaps as soon as one is empty. Flower runs
the ServerApp in a thread of its own, so a server-side allocation too large for the
arena's first heap (a batch of the test-set evaluation: about 19 MB of activations for
128 images through the paper CNN) mapped a fresh heap, faulted it in page by page and
unmapped it when the batch ended, every round (README, *Performance*, for what it cost);
the same evaluation in the main thread does not. With one arena every thread allocates
from the main heap, which keeps freed memory for reuse (below its trim threshold). The
clients are unaffected: a Ray actor runs its calls in its main thread.

Set at the import of ``flnorm.runner``, the limit reaches the ServerApp thread of ``flnorm
run``, ``run_experiment`` and grids. Under ``flwr run .`` it comes too late: Flower's
simulation process imports the ServerApp inside that thread, which has its arena by then;
``MALLOC_ARENA_MAX=1`` in the environment of ``flwr run`` (which the local SuperLink it
starts, and the simulation process, inherit) does the same there.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENA_ENV = "MALLOC_ARENA_MAX"  # glibc's environment variable for the same limit
ONE_ARENA_ENV = {ARENA_ENV: "1"}  # for the environment of a process flnorm cannot reach at import


def user_chose_arenas() -> bool:
    """Whether the environment sets glibc's number of arenas (flnorm then leaves it alone)."""
    return ARENA_ENV in os.environ


def one_malloc_arena() -> bool:
    """Limit glibc's malloc to one arena, process-wide, for threads that allocate from now on.

    Returns whether the setting was made: not on another C library, nor when the user
    chose the number of arenas (``MALLOC_ARENA_MAX``). glibc fixes the limit when it first
    needs it, so it cannot be undone. A thread that gets its arena afterwards shares one of
    those that exist: the main one only, when no other thread has allocated before.
    """
    if user_chose_arenas():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and macOS lack it)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, 1))
