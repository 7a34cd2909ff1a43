"""What a run or a grid shows while it works.

On a terminal, one ``tqdm`` bar (rounds done, elapsed, time left, the last global
accuracy); elsewhere (a log file, CI, a notebook) one line per round with the same facts.
Flower's own log (four INFO lines a round, the ``run_simulation`` deprecation notice)
shows only with ``verbose``; warnings and errors always show.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from tqdm import tqdm

log = logging.getLogger("flnorm")
FLOWER_NOTICE = "DEPRECATED FEATURE: The `run_simulation` function"


def ensure_logging() -> None:
    """Show flnorm's INFO lines on stderr, unless the application has configured its logger."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s flnorm: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def interactive() -> bool:
    """Whether progress goes to a terminal (a bar) rather than a log (lines)."""
    return sys.stderr.isatty()


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FLOWER_NOTICE not in record.getMessage()


@contextmanager
def flower_log(verbose: bool) -> Iterator[None]:
    """Inside, Flower's logger shows warnings and errors only (everything with ``verbose``)."""
    flower = logging.getLogger("flwr")
    level, notice = flower.level, _DropNotice()
    if verbose:
        yield
        return
    flower.setLevel(logging.WARNING)
    flower.addFilter(notice)
    try:
        yield
    finally:
        flower.removeFilter(notice)
        if flower.level == logging.WARNING:  # a stop may have silenced it further; keep that
            flower.setLevel(level)


class Progress:
    """Progress of ``total`` steps (rounds of a run, cells of a grid), from ``done`` on.

    ``step`` marks one more step done and says how it went (e.g. the round's accuracy).
    The time left is the mean time of the steps made in this process times the steps
    left (the first step, which carries the start-up, counts only while alone).
    """

    def __init__(self, label: str, total: int, done: int = 0, unit: str = "round") -> None:
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.started = time.perf_counter()
        self.first = done
        self.first_done = math.nan  # when this process's first step ended
        self.bar = (tqdm(total=total, initial=done, desc=label, unit=unit, dynamic_ncols=True, leave=True)
                    if interactive() else None)
        if self.bar is None:
            ensure_logging()

    def left(self) -> float:
        """Seconds left: the mean of this process's steps after its first (which carries the
        start-up: Ray actors, imports, caches), or that first one alone."""
        made = self.done - self.first
        if made == 0:
            return math.nan
        if made == 1:
            return (self.first_done - self.started) * (self.total - self.done)
        return (time.perf_counter() - self.first_done) / (made - 1) * (self.total - self.done)

    def step(self, text: str, short: str | None = None) -> None:
        """One more step done; ``text`` for the log line, ``short`` (default ``text``) beside the bar."""
        self.done += 1
        if self.done == self.first + 1:
            self.first_done = time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix_str(short or text, refresh=False)
            self.bar.update(1)
            return
        log.info("%s %d/%d: %s | elapsed %s, left %s", self.unit, self.done, self.total, text,
                 clock(time.perf_counter() - self.started), clock(self.left()))

    def note(self, text: str) -> None:
        """A line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
