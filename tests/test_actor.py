"""flnorm's Ray actor: runs a ClientApp as Flower's actor does, without Flower's simulation runtime."""

import os
from pathlib import Path

import pytest
import ray
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from flnorm.config import ExperimentConfig
from flnorm.runner.actor import ClientActor
from flnorm.runner.simulation import start_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    assert start_ray(ExperimentConfig(ray_cpus=2)), "a Ray instance was already running"
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Instructions are stamped with the sender's identity: the SuperLink's, as in a simulation."""
    for name, value in (("_task_id", 11), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _call(actor, message_type: str, partition_id: int = 3):
    from probe_client_app import app

    msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=5, message_type=message_type)
    context = Context(run_id=1, node_id=5, node_config={"partition-id": partition_id}, state=RecordDict(),
                      run_config={})
    return ray.get(actor.run.remote(lambda: app, msg, str(partition_id), context))


def test_actor_runs_the_client_app_in_its_own_process_without_flower_simulation(local_ray):
    actor = ClientActor.remote()
    cid, reply, context = _call(actor, "query")
    metrics = reply.content["metrics"]
    assert cid == "3" and metrics["partition_id"] == 3
    assert metrics["pid"] != os.getpid()
    assert metrics["flwr_simulation_imported"] == 0  # Flower's ClientAppActor module would import it
    assert context.state["seen"]["calls"] == 1  # the context comes back updated
    ray.kill(actor)


def test_actor_wraps_client_errors_like_flowers_actor(local_ray):
    actor = ClientActor.remote()
    with pytest.raises(ClientAppException, match="injected failure in train"):
        _call(actor, "train")
    ray.kill(actor)


def test_client_threads_follow_the_cpus_ray_assigned(local_ray):
    from clients.client_app import actor_cpus

    actor = ClientActor.options(num_cpus=2).remote()
    _, reply, _ = _call(actor, "query.threads")
    assert reply.content["metrics"]["actor_cpus"] == 2  # not the run's num-cpus (1)
    assert actor_cpus() is None  # the driver is no actor
    ray.kill(actor)


def test_a_local_ray_starts_no_api_server_or_autoscaler_monitor_process(local_ray):
    from ray._private import ray_constants, services
    from ray._private.node import Node

    from flnorm.runner import ray_start

    node = ray._private.worker.global_worker.node
    assert ray_constants.PROCESS_TYPE_DASHBOARD not in node.all_processes
    assert ray_constants.PROCESS_TYPE_MONITOR not in node.all_processes
    assert {ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER} <= set(node.all_processes)
    assert Node.start_api_server is not ray_start._no_api_server  # restored after ray.init
    assert Node.start_monitor is not ray_start._no_monitor
    assert services.get_node.__module__ == "ray._private.services"


def test_the_start_up_changes_apply_only_to_their_ray_release_and_only_inside_the_block(monkeypatch):
    from ray._private import services, utils
    from ray._private.node import Node

    from flnorm.runner import ray_start

    targets = [(Node, "start_api_server"), (Node, "start_monitor"), (utils, "get_dashboard_dependency_error"),
               (services, "get_node")]
    originals = [getattr(owner, name) for owner, name in targets]

    def changed() -> list[bool]:
        return [getattr(owner, name) is not original for (owner, name), original in zip(targets, originals)]

    assert ray.__version__ == ray_start.RAY_VERSION, "the pinned Ray moved: check flnorm/runner/ray_start.py"
    with ray_start.start_up_changes(local=True):
        assert changed() == [True, True, True, True]
        assert Node.start_api_server is ray_start._no_api_server and Node.start_monitor is ray_start._no_monitor
    assert changed() == [False, False, False, False]
    with ray_start.start_up_changes(local=False):  # joining a cluster: its head runs its API server, monitor
        assert changed() == [False, False, True, False]
    monkeypatch.setattr(ray_start, "RAY_VERSION", "0.0.0")
    with ray_start.start_up_changes(local=True):
        assert changed() == [False, False, False, False]


# Run in a fresh process: a real local start through ``start_ray``. A spy stands in for Ray's
# ``services.get_node`` (the call that sleeps a second between checks while the raylet has not
# registered): it reads the GCS's node table itself when Ray's call is made.
_REAL_START = """
import json, sys
import ray
from ray._private import services
from ray._private.state import GlobalState
from flnorm import ExperimentConfig
from flnorm.runner.simulation import start_ray

rays_get_node, calls = services.get_node, []

def spy(gcs_address, node_id):
    state = GlobalState()
    state._initialize_global_state(services._get_gcs_client_options(gcs_address))
    table = state._connect_and_get_accessor().get_node_table()
    calls.append(any(n["NodeID"] == node_id and n["Alive"] for n in table))
    info = rays_get_node(gcs_address, node_id)
    calls.append(info["node_id"] == node_id)
    return info

services.get_node = spy
start_ray(ExperimentConfig(ray_cpus=1))
print(json.dumps({"aiohttp": "aiohttp" in sys.modules, "calls": calls,
                  "restored": services.get_node is spy}))
ray.shutdown()
"""


def test_a_real_local_start_imports_no_aiohttp_and_asks_for_its_node_once_registered():
    """flnorm's dependency check names the same modules as Ray's ``optional_deps`` and gives Ray's
    verdict (missing or not); a real local start then leaves aiohttp unimported in the driver and
    makes Ray's node call once, with the node already registered (so it answers without sleeping)."""
    import ast
    import json
    import subprocess
    import sys

    import ray.dashboard
    from ray._private.utils import get_dashboard_dependency_error

    from flnorm.runner import ray_start

    source = Path(ray.dashboard.__file__).with_name("optional_deps.py").read_text()
    tree = ast.parse(source)
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert tops == set(ray_start.DASHBOARD_DEPENDENCIES)
    assert (ray_start.missing_dashboard_dependency() is None) == (get_dashboard_dependency_error() is None)
    out = subprocess.run([sys.executable, "-c", _REAL_START], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["aiohttp"] == (ray_start.missing_dashboard_dependency() is None)
    assert seen["calls"] == [True, True]  # one call, made after the raylet registered
    assert seen["restored"]


# Run in a fresh process: Flower's own Ray backend, built as ``flwr run``'s simulation process
# builds it (its __init__ starts Ray), with flnorm's engine switched on.
_FLOWER_BACKEND_START = """
import json, os, sys
sys.path.insert(0, os.getcwd())  # as Flower puts the app's directory on the simulation process's path
import ray
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from ray._private import ray_constants
from flnorm.runner.engine import engine_changes

with engine_changes():
    backend = RayBackend({"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                          "init_args": {"num_cpus": 2, "logging_level": "ERROR"}})

@ray.remote(num_cpus=1)
def worker_path():
    return os.environ.get("PYTHONPATH", "")

node = ray._private.worker.global_worker.node
print(json.dumps({"api_server": ray_constants.PROCESS_TYPE_DASHBOARD in node.all_processes,
                  "monitor": ray_constants.PROCESS_TYPE_MONITOR in node.all_processes,
                  "runtime_env": dict(ray.get_runtime_context().runtime_env),
                  "worker_path": ray.get(worker_path.remote()).split(os.pathsep),
                  "driver_path": os.environ["PYTHONPATH"].split(os.pathsep)}))
ray.shutdown()
"""


def test_flowers_backend_starts_a_local_ray_with_flnorms_start_up_and_no_runtime_env():
    """Under ``flwr run`` Flower's backend starts Ray; with flnorm's engine on it starts without an
    API server process or autoscaler monitor and without Flower's runtime env (a job with one cannot
    use the workers Ray starts with it), and the workers still get the driver's module path, inherited."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FLOWER_BACKEND_START], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert not seen["api_server"] and not seen["monitor"] and seen["runtime_env"] == {}
    assert seen["worker_path"] == seen["driver_path"] and str(Path(__file__).parents[1]) in seen["worker_path"]
