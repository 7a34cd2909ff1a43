"""SIGINT and SIGTERM stop a run within seconds, with the conventional exit code, no process
left behind and the last complete round resumable; a real ``flnorm run`` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from flnorm.runner import stopping
from flower_processes import left_running

RUN = ["--clients", "3", "--rounds", "4", "--local-steps", "2", "--seed", "0"]
STOP_WITHIN = 20.0  # seconds from the signal to the exit; about 3 s on a quiet 2-core machine


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flnorm.cli", "run", *RUN, "--out", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _rounds_done(out: Path) -> int:
    metrics = out / "metrics.csv"
    return len(pd.read_csv(metrics)) if metrics.exists() else 0


def _stop(proc: subprocess.Popen, signum: int) -> tuple[int, float, str]:
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        # The grace lets a process that is already ending finish: Flower composes a telemetry event at
        # the end of ``run_simulation`` even with telemetry disabled, and its ``platform.architecture()``
        # runs ``file`` on a daemon thread, which the stopped run can leave for a few milliseconds.
        leftover = left_running(proc.pid, settle=5.0)
        seen = leftover and subprocess.run(["ps", "-o", "pid=,stat=,args=", "-p", ",".join(map(str, leftover))],
                                           capture_output=True, text=True).stdout
        if proc.poll() is None or leftover:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not leftover, seen or leftover
    return proc.returncode, time.monotonic() - sent, err


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_stops_and_resumes(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = _start(out)
    deadline = time.monotonic() + 120
    while _rounds_done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    returncode, seconds, err = _stop(proc, signum)
    assert returncode == code, err
    assert seconds < STOP_WITHIN
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert f"flnorm run --resume --out {out}" in err
    assert _rounds_done(out) < 4
    resumed = subprocess.run([sys.executable, "-m", "flnorm.cli", "run", "--resume", "--out", str(out)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert list(pd.read_csv(out / "metrics.csv")["round"]) == [1, 2, 3, 4]
    assert not (out / "checkpoint.pt.tmp").exists()


@pytest.mark.slow
def test_sigterm_during_start_up_exits_143_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    time.sleep(4)  # imports done, Ray starting
    assert proc.poll() is None, proc.communicate()
    returncode, seconds, err = _stop(proc, signal.SIGTERM)
    assert returncode == 143, err
    assert seconds < STOP_WITHIN
    assert "stopped by SIGTERM" in err and "Traceback" not in err


def test_a_signal_stops_a_registered_engine_while_the_main_thread_is_blocked():
    """The kernel may deliver the signal to any thread; a main thread blocked in a join
    (as in Flower's engine) runs no Python handler until the join returns. The watcher
    sets the engine's stop event, the joined thread ends, and ``Stopped`` is raised."""
    engine_stop = threading.Event()
    worker = threading.Thread(target=lambda: engine_stop.wait(30))  # a Flower worker: ends on f_stop
    sender = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    start = time.monotonic()
    with stopping.stop_on_signals(), stopping.engine(engine_stop):
        worker.start()
        sender.start()
        with pytest.raises(stopping.Stopped) as stop:
            worker.join()  # blocked: only the watcher can end this
            time.sleep(5)  # the handler runs here at the latest
    assert stop.value.exit_code == 143
    assert engine_stop.is_set()
    assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_inside_deferred_takes_effect_at_its_end():
    with stopping.stop_on_signals():
        with pytest.raises(stopping.Stopped) as stop:
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                reached_end = True
        assert reached_end
    assert stop.value.exit_code == 130


@pytest.mark.slow
def test_grid_stopped_by_sigint_continues_the_cell_it_cut_short(tmp_path):
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "flnorm.cli", "grid", "--clients", "3", "--rounds", "6", "--local-steps", "2",
           "--seed", "0", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = out / "seed=0"
    deadline = time.monotonic() + 120
    while _rounds_done(first) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    returncode, seconds, err = _stop(proc, signal.SIGINT)
    assert returncode == 130, err
    assert seconds < STOP_WITHIN and "Traceback" not in err
    cut_at = _rounds_done(first)
    assert 2 <= cut_at < 6
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resumed after round {cut_at}" in again.stderr
    for cell in ("seed=0", "seed=1"):
        assert list(pd.read_csv(out / cell / "metrics.csv")["round"]) == [1, 2, 3, 4, 5, 6]
    assert "configure_train" not in again.stderr  # Flower's per-round lines: only with --verbose
    assert "DEPRECATED FEATURE" not in again.stderr
    assert "cell 2/2: seed=1: ran" in again.stderr
    assert "round 6/6: test_accuracy" in again.stderr and ", left 0:00:00" in again.stderr


SLOW_EVALUATION = """
import pathlib, sys, time
from flnorm import ExperimentConfig, run_experiment
from flnorm.runner import recorder
from flnorm.runner.ray_backend import keep_ray
from flnorm.runner.stopping import Stopped, stop_on_signals

out = pathlib.Path(sys.argv[1])
original = recorder.RoundRecorder.union_eval

def slow(self, arrays):  # from round 2 on, the ServerApp spends 5 s between two waits for replies
    if (out / "metrics.csv").exists():
        (out.parent / "evaluating").touch()
        time.sleep(5)
    return original(self, arrays)

recorder.RoundRecorder.union_eval = slow
try:
    with stop_on_signals(), keep_ray():  # as a grid or a reproduction script runs its cells
        run_experiment(ExperimentConfig(clients=3, rounds=4, local_steps=2, out=str(out)))
except Stopped as stop:
    sys.exit(stop.exit_code)
"""


@pytest.mark.slow
def test_a_signal_while_the_server_is_between_waits_still_stops_the_process(tmp_path):
    """The ServerApp thread, busy when the signal comes, must meet the stop at its next wait for
    replies: it used to enter Flower's own wait (the engine changes already undone) and keep
    the process alive for round-timeout seconds."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATION, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "evaluating").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    returncode, seconds, err = _stop(proc, signal.SIGINT)
    assert returncode == 130, err
    assert seconds < STOP_WITHIN, seconds


def test_a_second_signal_exits_at_once_even_when_the_first_cannot_be_handled():
    """The main thread blocks SIGINT (the kernel hands it to another thread) and waits on a
    thread that never ends, so the first SIGINT's Python handler cannot run; the second exits
    from the watcher thread with 130."""
    code = (
        "import signal, threading\n"
        "from flnorm.runner.stopping import stop_on_signals\n"
        "never = threading.Thread(target=threading.Event().wait, daemon=True)\n"
        "with stop_on_signals():\n"
        "    never.start(); signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "    print('ready', flush=True); never.join()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first one is waiting for the main thread
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert time.monotonic() - sent < 5
    assert "second SIGINT: exiting without cleanup" in proc.stderr.read()


def test_a_stopped_command_exits_even_when_a_thread_would_keep_it_alive():
    """``finish_stopped``: a non-daemon thread stuck in a wait is named, and the process exits at once."""
    code = ("import threading, time\nfrom flnorm.runner.stopping import finish_stopped\n"
            "threading.Thread(target=time.sleep, args=(600,), name='stuck-serverapp').start()\n"
            "raise SystemExit(finish_stopped(143))\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and time.monotonic() - start < 30
    assert "threads still running after the stop (stuck-serverapp)" in proc.stderr
    quiet = subprocess.run([sys.executable, "-c", "from flnorm.runner.stopping import finish_stopped\n"
                            "raise SystemExit(finish_stopped(130))"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 130 and quiet.stderr == ""
