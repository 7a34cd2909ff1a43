"""flnorm's changes to a SuperNode's Flower runtime: warm ClientApp processes and short polls.

Flower 1.41's SuperNode runs every message in a new ``flwr-clientapp`` process, started by
its SuperExec (``flower-superexec``), which imports torch and Flower afresh before the app
does any work; and when it has no message it waits 3 s before asking the SuperLink again,
so every phase of a round (train, then evaluate) starts up to 3 s late. Both happen twice a
round on every node (see the README's deployment timings). flnorm changes two things, each
in a process of its own that runs Flower's own command:

- ``flower-superexec`` (``superexec_main``): a ClientApp task is started by a fork server
  (the standard library's ``multiprocessing`` forkserver) that imported ``PRELOAD`` once,
  and runs Flower's own ``run_clientapp`` with the task's token, the function
  ``flwr-clientapp`` runs. The app (flnorm, ``clients``) is deliberately not preloaded:
  Flower loads it from the run's FAB in the child, as in a fresh process (a preloaded
  module would shadow the FAB's). Other task types, and tasks whose output Flower
  suppresses, go to Flower's subprocess executor.
- ``flower-supernode`` (``supernode_main``): its message loop waits ``poll`` seconds
  (``POLL_ENV``, default ``DEFAULT_POLL``) instead of 3 s when it has no message, and
  checks every ``REPLY_POLL`` s instead of 0.5 s whether its ClientApp has replied.

``flnorm deploy supernode`` runs both (``--cold`` keeps Flower's): ``runtime_bin`` writes a
``flower-supernode`` and a ``flower-superexec`` script that call these functions, and
``deploy.flower_env`` puts their directory first on ``PATH`` (the SuperNode launches
``flower-superexec`` by name). The changes reach into Flower's internals, so they are made
only on the release the simulation engine is written for (``engine.FLOWER_VERSION``); on
another one Flower runs unchanged, with one log line. The scripts import nothing at module
level: the fork server's children run the SuperExec's script as their ``__main__``
(``multiprocessing``'s rule) and must not import flnorm.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

PRELOAD = ("torch", "numpy", "flwr.app", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp")
POLL_ENV = "FLNORM_SUPERNODE_POLL"
DEFAULT_POLL = 0.2  # s between a SuperNode's requests for a message when it has none (Flower: 3)
REPLY_POLL = 0.05  # s between a SuperNode's checks for its ClientApp's reply (Flower: 0.5)
_FLOWER_IDLE_SLEEP, _FLOWER_REPLY_SLEEP = 3, 0.5  # the two waits of Flower 1.41's SuperNode loop


class ForkServerExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks forked from a preloaded server, the rest
    launched as Flower launches them (``SubprocessExecutor``)."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        from multiprocessing import forkserver

        from flwr.supercore.superexec.executor import SubprocessExecutor

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        forkserver.ensure_running()  # the server imports now, not when the first message arrives
        self._subprocess = SubprocessExecutor()
        self._children: list[multiprocessing.process.BaseProcess] = []

    def get_eligible_capacity(self, supported_task_types: set, **kwargs: Any) -> tuple[set, set[str]]:
        return self._subprocess.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, task_type: Any = None, **kwargs: Any) -> None:
        self._subprocess.wait_for_capacity(task_type, **kwargs)

    def launch(self, spec: Any) -> Any:
        """Fork a ClientApp task's process from the fork server; hand anything else to Flower's."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        if spec.task_type != TaskType.CLIENT_APP or spec.suppress_output:
            return self._subprocess.launch(spec)
        kwargs = {
            "runtime_api_address": spec.runtime_api_address,
            "token": spec.token,
            "insecure": spec.insecure,
            "certificates": validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            "parent_pid": spec.parent_pid,
            "runtime_dependency_install": spec.runtime_dependency_install,
        }
        # daemon: a SuperExec that exits does not wait for its tasks (they also watch parent_pid)
        child = self._context.Process(target=run_clientapp, kwargs=kwargs, name=f"flwr-clientapp-{spec.task_id}",
                                      daemon=True)
        try:
            child.start()
        except Exception as exc:  # noqa: BLE001 - reported to Flower as a failed launch
            return LaunchResult.failed(f"flnorm fork server could not start the ClientApp: {exc}")
        self._children.append(child)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Forget finished tasks (closes their pipes to the fork server)."""
        running = []
        for child in self._children:
            if child.is_alive():
                running.append(child)
            else:
                child.close()
        self._children = running
        self._subprocess.reconcile()

    def close(self) -> None:
        self._subprocess.close()


class NodeClock:
    """Stands for the ``time`` module in Flower's SuperNode loop, with shorter waits.

    Flower 1.41's loop sleeps 3 s when no message came and 0.5 s between checks for its
    ClientApp's reply; those two become ``poll`` and ``REPLY_POLL``. Everything else is ``time``'s.
    """

    def __init__(self, poll: float) -> None:
        self.poll = poll

    def sleep(self, seconds: float) -> None:
        if seconds == _FLOWER_IDLE_SLEEP:
            seconds = self.poll
        elif seconds == _FLOWER_REPLY_SLEEP:
            seconds = REPLY_POLL
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_poll(poll: float, source: str) -> float:
    """``poll`` if it is a sane idle poll in s, in (0, 60]; else ``ValueError`` naming ``source``."""
    if not 0 < poll <= 60:
        raise ValueError(f"{source}: give seconds in (0, 60]")
    return poll


def node_poll() -> float:
    """The SuperNode's idle poll in s: ``POLL_ENV`` if set, else ``DEFAULT_POLL``."""
    raw = os.environ.get(POLL_ENV, "")
    source = f"{POLL_ENV}={raw!r}"
    try:
        poll = float(raw) if raw else DEFAULT_POLL
    except ValueError:
        raise SystemExit(f"{source}: give the SuperNode's poll interval in seconds, e.g. 0.2") from None
    try:
        return check_poll(poll, source)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _changes_apply(component: str) -> bool:
    """Whether the installed Flower is the release the changes are written for; says so if not."""
    from flwr.supercore import log

    from flnorm.runner.engine import FLOWER_VERSION, supported

    if supported():
        return True
    from importlib.metadata import version

    log(WARNING, "flnorm's %s changes are written for Flower %s and Flower %s is installed: running Flower's "
                 "%s unchanged", component, FLOWER_VERSION, version("flwr"), component)
    return False


def superexec_main() -> None:
    """``flower-superexec``, with ClientApp tasks forked warm (on the supported Flower release)."""
    from flwr.supercore import log
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import ExecutorType

    if _changes_apply("SuperExec"):
        run_superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
        flower_get_executor = run_superexec.get_executor

        def get_executor(executor_type: ExecutorType, **kwargs: Any) -> Any:
            if executor_type == ExecutorType.SUBPROCESS:
                return ForkServerExecutor()
            return flower_get_executor(executor_type, **kwargs)

        run_superexec.get_executor = get_executor  # this process only: its one SuperExec loop
        log(INFO, "flnorm SuperExec: ClientApp processes forked from a fork server with %s imported",
            ", ".join(PRELOAD))
    flower_superexec()


def supernode_main() -> None:
    """``flower-supernode``, polling every ``node_poll()`` s when idle (on the supported Flower release)."""
    from flwr.supercore import log
    from flwr.supernode.cli import flower_supernode

    poll = node_poll()
    if _changes_apply("SuperNode"):
        loop = importlib.import_module("flwr.supernode.start_client_internal")
        loop.time = NodeClock(poll)  # this process only: the module's one message loop
        log(INFO, "flnorm SuperNode: asks for a message every %.2f s when idle (Flower: %d s)", poll,
            _FLOWER_IDLE_SLEEP)
    flower_supernode()


def runtime_bin(flwr_home: str | Path) -> Path:
    """A directory under ``flwr_home`` with ``flower-supernode`` and ``flower-superexec`` scripts
    that run ``supernode_main`` and ``superexec_main`` in this environment's Python."""
    directory = Path(flwr_home).resolve() / "flnorm-bin"
    directory.mkdir(parents=True, exist_ok=True)
    for command, function in (("flower-supernode", "supernode_main"), ("flower-superexec", "superexec_main")):
        script = directory / command
        script.write_text(f"#!{sys.executable}\n"
                          f"# {command} with flnorm's changes (flnorm.deploy_engine); imports nothing on import\n"
                          "if __name__ == \"__main__\":\n"
                          f"    from flnorm.deploy_engine import {function}\n\n"
                          f"    {function}()\n")
        script.chmod(0o755)
    return directory
