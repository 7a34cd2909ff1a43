"""A quicker ``ray.init`` for a Ray started here: four changes to Ray 2.55's start-up.

Each removes a wait, or work competing for the CPU, from start-up's critical path, for
something flnorm does not need (README, *Start-up*, has the measurements):

- **No API server.** With the dashboard off, Ray still starts its dashboard head, a Python
  process serving only usage statistics, and polls until it has published its address
  before it starts the raylet. flnorm uses nothing it serves (no dashboard, job or state
  API); usage statistics go unreported.
- **No autoscaler monitor.** A local Ray starts the autoscaler's monitor, a Python process
  that starts beside the raylet's two agents, whose start-up is the critical path of
  ``ray.init`` on few cores. A Ray started here never scales: the monitor serves ``ray
  status`` and resource requests (``request_resources``), which flnorm does not use, and
  reports resource demands no node can meet, which flnorm refuses before Ray starts
  (``simulation.prepare``).
- **Dashboard dependencies looked up, not imported.** To decide whether the dashboard
  agent runs ``--minimal``, Ray imports aiohttp and the rest in the driver even when one is
  missing. A missing top-level module is found with ``importlib.util.find_spec`` and
  reported as the same ``ImportError``; only when all are present does Ray's own check run.
- **The raylet's registration noticed promptly.** ``ray.init`` asks the GCS for its node
  through a call that, while the raylet has not registered yet, sleeps a whole second
  between checks; the raylet registers 2-4 s after its start, once its agents are up.
  flnorm checks the GCS's node table every ``NODE_POLL_SECONDS`` first (one 0.5 ms request)
  and makes Ray's call once the node is there, so it answers at once.

They reach into Ray's internals, so they apply only on the Ray release they were written
for (``RAY_VERSION``) and only inside ``start_up_changes``; on any other release Ray starts
as it is, only slower.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RAY_VERSION = "2.55.1"  # the Ray release whose start-up these changes were written for
# The top-level modules of ``ray.dashboard.optional_deps`` (Ray 2.55): Ray's dashboard needs all of them.
DASHBOARD_DEPENDENCIES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client",
                          "pydantic")
NODE_POLL_SECONDS = 0.02  # between two looks at the GCS's node table while the raylet registers
NODE_WAIT_SECONDS = 30.0  # then Ray's own call decides (``ray.init`` gives a raylet 30 s to register)


@contextmanager
def start_up_changes(local: bool) -> Iterator[None]:
    """Inside, ``ray.init`` starts a local Ray with the changes above (``local``: a Ray started
    here, not a cluster joined). Ray's own code is back after the block."""
    originals = []
    for owner, name, replacement in changes(local):
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def changes(local: bool) -> list[tuple[object, str, Callable[..., Any]]]:
    """``(owner, attribute, replacement)`` for each change that applies: none on another Ray release;
    joining a cluster, only the dependency check (its head runs its own API server and monitor,
    and its node is registered already)."""
    import ray
    from ray._private import services, utils
    from ray._private.node import Node

    if ray.__version__ != RAY_VERSION:
        return []
    found = [(utils, "get_dashboard_dependency_error", _looked_up_first(utils.get_dashboard_dependency_error))]
    if local:
        found += [(Node, "start_api_server", _no_api_server), (Node, "start_monitor", _no_monitor),
                  (services, "get_node", _once_registered(services.get_node))]
    return found


def _no_api_server(self: Any, **kwargs: Any) -> None:
    """``ray._private.node.Node.start_api_server`` that starts nothing (``webui_url`` stays None)."""


def _no_monitor(self: Any) -> None:
    """``ray._private.node.Node.start_monitor`` that starts nothing (no autoscaler monitor)."""


def _looked_up_first(rays_check: Callable[[], ImportError | None]) -> Callable[[], ImportError | None]:
    """Ray's ``get_dashboard_dependency_error``, run only when no dependency is missing."""

    def check() -> ImportError | None:
        missing = missing_dashboard_dependency()
        return missing if missing is not None else rays_check()

    return check


def missing_dashboard_dependency() -> ImportError | None:
    """The ``ImportError`` of the first of ``DASHBOARD_DEPENDENCIES`` not installed, found without
    importing anything; None when all are."""
    for name in DASHBOARD_DEPENDENCIES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            return ModuleNotFoundError(f"No module named '{name}'", name=name)
    return None


def _once_registered(rays_get_node: Callable[[str, str], dict]) -> Callable[[str, str], dict]:
    """Ray's ``services.get_node``, called once the node is in the GCS's node table (or after
    ``NODE_WAIT_SECONDS``, when Ray's call reports what is wrong as it always does)."""

    def get_node(gcs_address: str, node_id: str) -> dict:
        wait_until_registered(gcs_address, node_id)
        return rays_get_node(gcs_address, node_id)

    return get_node


def wait_until_registered(gcs_address: str, node_id: str, timeout: float = NODE_WAIT_SECONDS) -> bool:
    """Whether the node ``node_id`` (hex) is alive in the GCS at ``gcs_address`` within ``timeout`` s."""
    from ray._private import services
    from ray._private.state import GlobalState

    state = GlobalState()
    state._initialize_global_state(services._get_gcs_client_options(gcs_address))
    try:
        accessor = state._connect_and_get_accessor()
        deadline = time.monotonic() + timeout
        while not any(n["NodeID"] == node_id and n["Alive"] for n in accessor.get_node_table()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(NODE_POLL_SECONDS)
        return True
    finally:
        state.disconnect()


def export_module_path() -> str:
    """Put this process's module path (``sys.path``, then ``PYTHONPATH``) in ``PYTHONPATH`` and
    return it: the processes of a Ray started here inherit it, so its workers import what this
    process imports (a runtime env would do the same, at a second of start-up)."""
    paths = [*sys.path, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return os.environ["PYTHONPATH"]
