"""flnorm's changes to Flower's simulation engine, behind one switch.

flnorm replaces a few functions of Flower's in-process simulation engine (see
``flnorm.runner.dispatch``: event-driven message flow and stop handling;
``flnorm.runner.ray_backend``: a lighter actor with a second queued message, Ray kept
between a grid's runs). They reach into Flower's internals, so they are written for one
Flower release, ``FLOWER_VERSION``:

- ``engine_changes()`` applies them for the duration of a block and puts Flower's own code
  back when the last block ends (nested or concurrent blocks share one application). With
  any other Flower release it changes nothing, says so in one log line, and the run uses
  Flower's engine as it is: the same results, only slower.
- ``flnorm run`` (``simulation.run_prepared``) runs its simulation inside that block.
- Under ``flwr run``, a SuperLink starts Flower's simulation process (``flwr-simulation``),
  which imports the ServerApp in a thread of its own and the ClientApp in its main thread,
  the latter just before it builds the Ray backend and starts the message loop. Both app
  modules call ``adopt_in_flower_simulation()`` at import: the first applies the changes,
  in time for the engine, so the same engine runs there, with the federation's
  ``options.backend`` settings. That process runs one run and exits; the changes last its
  lifetime.

``config.json`` records which engine a simulation ran on (``resolved.engine``).

This module imports no Flower at import time (the ClientApp imports it in every process).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from flnorm.runner.malloc_arena import ARENA_ENV, user_chose_arenas

log = logging.getLogger("flnorm")

FLOWER_VERSION = "1.41.0"  # the Flower release whose internals the changes replace

_lock = threading.RLock()
_users = 0
_originals: list[tuple[object, str, object]] = []
_warned = False


def supported() -> bool:
    """Whether the installed Flower is the release the changes were written for."""
    return version("flwr") == FLOWER_VERSION


def active() -> bool:
    """Whether flnorm's changes are in effect in this process now."""
    return bool(_originals)


def _changes() -> list[tuple[object, str, object]]:
    from flnorm.runner import dispatch, ray_backend

    return [*dispatch.changes(), *ray_backend.changes()]


def _acquire() -> bool:
    global _users, _warned
    with _lock:
        if not supported():
            if not _warned:
                log.warning("flnorm's engine changes are written for Flower %s and Flower %s is installed: "
                            "running Flower's engine unchanged (same results, slower)",
                            FLOWER_VERSION, version("flwr"))
                _warned = True
            return False
        if _users == 0:
            for owner, name, replacement in _changes():
                _originals.append((owner, name, getattr(owner, name)))
                setattr(owner, name, replacement)
        _users += 1
        return True


def _release() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            while _originals:
                owner, name, original = _originals.pop()
                setattr(owner, name, original)


@contextmanager
def engine_changes() -> Iterator[bool]:
    """flnorm's engine inside the block, Flower's own after it; yields whether it is flnorm's."""
    applied = _acquire()
    try:
        yield applied
    finally:
        if applied:
            _release()


def in_flower_simulation() -> bool:
    """Whether this process is Flower's simulation process (``flwr-simulation``)."""
    return Path(sys.argv[0]).name == "flwr-simulation" and "flwr.simulation.app" in sys.modules


def adopt_in_flower_simulation() -> None:
    """In Flower's simulation process, apply the changes for the rest of its life; else nothing."""
    if in_flower_simulation() and not active() and _acquire():
        log.info("flnorm engine on (Flower %s)", FLOWER_VERSION)
        if not user_chose_arenas():
            log.info("%s=1 in the environment of `flwr run` makes the server's evaluation faster "
                     "(flnorm.runner.malloc_arena)", ARENA_ENV)
