"""Every thread of a run, Flower's ServerApp thread among them, allocates from glibc's main arena.

Each run is a fresh process (glibc's arena limit is process-wide and permanent); glibc's
``malloc_stats`` lists the arenas the process has. The control is the same run with the
number of arenas chosen by the user (``MALLOC_ARENA_MAX=8``, which flnorm leaves alone):
there Flower's and Ray's threads get arenas of their own.
"""

import os
import re
import subprocess
import sys

import pytest

from flnorm.runner.malloc_arena import one_malloc_arena

pytestmark = pytest.mark.slow

RUN = r"""
import ctypes, tempfile
from pathlib import Path
from flnorm import ExperimentConfig, run_experiment

cfg = ExperimentConfig(clients=3, rounds=2, local_steps=2, partition="classes-2")
with tempfile.TemporaryDirectory() as tmp:
    run_experiment(cfg.replace(out=str(Path(tmp) / "run")))
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(env: dict[str, str]) -> int:
    """How many malloc arenas a small simulation's process has at its end."""
    out = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return len(re.findall(r"^Arena \d+:$", out.stderr, flags=re.MULTILINE))


def test_a_run_allocates_from_one_arena_unless_the_user_chose_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _arenas(env) == 1
    assert _arenas(env | {"MALLOC_ARENA_MAX": "8"}) > 1


def test_a_users_choice_of_arenas_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False
