"""Helpers for tests that start real Flower processes: free ports, stop by PID."""

from __future__ import annotations

import os
import socket
import time

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener_pids(port: int) -> list[int]:
    """PIDs listening on TCP ``port``."""
    return sorted(
        {c.pid for c in psutil.net_connections("tcp")
         if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    )


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def stop_tree(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Terminate ``pids``, their descendants and anything left in their sessions.

    Ray's agents are re-parented to PID 1 but keep their session id, hence the session
    sweep. Returns the PIDs that were signalled.
    """
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for p in _tree(root):
            procs[p.pid] = p
    sessions = {_sid(pid) for pid in procs} - {None, _sid(os.getpid())}
    for p in psutil.process_iter():
        if _sid(p.pid) in sessions:
            procs.setdefault(p.pid, p)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return sorted(procs)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and its descendants; a process that exits while the tree is walked is left out."""
    for _ in range(5):
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            if not root.is_running():
                return []
    return [root]


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` that still run (zombies run nothing)."""
    return [p.pid for p in psutil.process_iter(["status"])
            if _sid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE]


def stop_session(sid: int, timeout: float = 10.0) -> list[int]:
    """Terminate every process of session ``sid`` (e.g. what ``ray start`` left running after
    being started with ``start_new_session=True``: its daemons keep its session id)."""
    pids = session_pids(sid)
    return stop_tree(pids, timeout) if pids else []


def left_running(sid: int, settle: float = 10.0) -> list[int]:
    """The processes of session ``sid`` still running ``settle`` seconds after it was stopped
    (a daemon a stopped parent spawned during the stop may take a moment to exit on its own)."""
    deadline = time.monotonic() + settle
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids
