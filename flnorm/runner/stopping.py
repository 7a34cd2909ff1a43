"""Stopping a run: SIGINT and SIGTERM, and a simulation engine that ended.

Three parts must stop, and only one of them ever sees the signal's Python handler:

- **The main thread** runs Flower's simulation engine (Ray, the actor pool). Inside
  ``stop_on_signals`` SIGINT and SIGTERM raise ``Stopped`` there, so Flower's own
  ``finally`` blocks stop the engine and Ray on the way out.
- **But the main thread may not wake.** It spends the run blocked in a thread join inside
  Flower's engine, and the kernel may hand the signal to any thread: Python then runs the
  handler only when the join returns, which it never does while the engine runs. So the
  C-level handler also writes the signal to a pipe (``signal.set_wakeup_fd``); a watcher
  thread reading it sets the stop event of every running engine (``engine``), Flower's
  workers return, the join ends and the handler runs.
- **The ServerApp thread** (non-daemon, started by Flower) waits for client replies;
  ``flnorm.runner.dispatch`` ends that wait with ``EngineStopped`` once the engine's stop
  event is set. What it was doing between two waits (aggregating, evaluating, writing
  ``checkpoint.pt`` atomically) completes first, so the last complete round stays resumable.

A second signal exits at once (exit status 128 + signal), without cleanup.

Ray's driver installs a C++ SIGTERM handler that aborts the process three seconds later
(exit 134, ray-project/ray#64830); ``reclaim_signals`` puts flnorm's back after Ray starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; raised in the main thread.

    A ``KeyboardInterrupt`` so that code catching ``Exception`` (Flower's engine, a grid's
    cell loop) lets it through, as it lets Ctrl-C through.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class EngineStopped(RuntimeError):
    """The simulation engine ended while the ServerApp still waited for replies."""


class _State:
    active = 0  # nesting depth of stop_on_signals
    received: int | None = None  # the signal being acted on
    deferring = 0
    pending: int | None = None  # a signal that arrived inside ``deferred``
    engines: set[threading.Event] = set()
    lock = threading.RLock()  # the handler may run while the main thread holds it


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.received is not None:
        return  # a second signal: the watcher thread exits
    if _State.deferring:
        _State.pending = _State.pending or signum
        return
    _stop(signum)


def _stop(signum: int) -> None:
    _State.received = signum
    _stop_engines()
    raise Stopped(signum)


def _stop_engines() -> None:
    """Set every running engine's stop event (from the handler or the watcher, whichever is first)."""
    # From here on Flower reports the engine's shutdown as errors (each interrupted client
    # call with a traceback); the one line that matters comes from flnorm.
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    with _State.lock:
        for stop in _State.engines:
            stop.set()


def _watch(read_fd: int) -> None:
    """Wake on every signal the C-level handler writes; stop the engines; exit on the second."""
    seen = 0
    while data := os.read(read_fd, 64):
        for signum in data:
            if signum not in SIGNALS:
                continue
            seen += 1
            if seen >= 2:
                sys.stderr.write(f"\nflnorm: second {signal.Signals(signum).name}: exiting without cleanup\n")
                os._exit(128 + signum)
            _stop_engines()
    os.close(read_fd)


def finish_stopped(code: int) -> int:
    """The exit code of a stopped command, after making sure nothing keeps the process alive.

    Python waits at exit for every non-daemon thread. A ServerApp thread (Flower starts it
    non-daemon) that is still in a wait which never sees the stop would keep the stopped
    process alive for ``round-timeout`` seconds; by now the run directory is consistent
    (the simulation gave the ServerApp ``SERVER_STOP_WAIT`` seconds), so such threads are
    named on stderr and the process exits at once.
    """
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if lingering:
        sys.stderr.write(f"flnorm: threads still running after the stop ({', '.join(lingering)}): "
                         "exiting without waiting for them\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM stop the running engines and raise ``Stopped`` in the main thread.

    Outside the main thread (where Python cannot install handlers) this does nothing:
    SIGINT then raises ``KeyboardInterrupt`` as usual. Nested uses share the outermost.
    """
    if threading.current_thread() is not threading.main_thread() or _State.active:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    flwr_level = logging.getLogger("flwr").level
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="flnorm-signals", daemon=True)
    watcher.start()
    _State.received, _State.pending, _State.active = None, None, 1
    try:
        yield
    finally:
        _State.active = 0
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads EOF and ends
        logging.getLogger("flwr").setLevel(flwr_level)


def reclaim_signals() -> None:
    """Re-install the handlers of ``stop_on_signals`` (after ``ray.init``, which replaces SIGTERM's)."""
    if stopping_active():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


@contextmanager
def engine(stop: threading.Event) -> Iterator[None]:
    """Register a running engine's stop event: a stop signal sets it from any thread."""
    with _State.lock:
        _State.engines.add(stop)
        if _State.received is not None:
            stop.set()
    try:
        yield
    finally:
        with _State.lock:
            _State.engines.discard(stop)


def stopping_active() -> bool:
    """Whether this thread runs inside ``stop_on_signals``' handlers."""
    return bool(_State.active) and threading.current_thread() is threading.main_thread()


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal arriving inside takes effect when the block ends.

    For start-up: an exception raised in the middle of an import can leave the module's
    import lock held (the next import of it deadlocks), and one raised inside ``ray.init``
    leaves Ray half started. Engines registered meanwhile are still stopped at once.
    """
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
        if not _State.deferring and _State.pending is not None and _State.received is None:
            signum, _State.pending = _State.pending, None
            _stop(signum)
