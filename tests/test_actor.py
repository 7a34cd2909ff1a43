"""flnorm's Ray actor: runs a ClientApp as Flower's actor does, without Flower's simulation runtime."""

import os

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


def test_a_local_ray_starts_no_api_server_process(local_ray):
    from ray._private import ray_constants
    from ray._private.node import Node

    from flnorm.runner import simulation

    node = ray._private.worker.global_worker.node
    assert ray_constants.PROCESS_TYPE_DASHBOARD not in node.all_processes
    assert {ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER} <= set(node.all_processes)
    assert Node.start_api_server is not simulation._no_api_server  # restored after ray.init


def test_the_api_server_change_applies_only_to_a_local_ray_of_its_release(monkeypatch):
    from ray._private.node import Node

    from flnorm.runner import simulation

    original = Node.start_api_server
    assert ray.__version__ == simulation.RAY_VERSION, "the pinned Ray moved: check _without_api_server against it"
    with simulation._without_api_server(local=True):
        assert Node.start_api_server is simulation._no_api_server
    with simulation._without_api_server(local=False):  # joining a cluster: its head runs its own
        assert Node.start_api_server is original
    monkeypatch.setattr(simulation, "RAY_VERSION", "0.0.0")
    with simulation._without_api_server(local=True):
        assert Node.start_api_server is original
    assert Node.start_api_server is original


def test_the_dashboard_dependency_check_matches_rays_and_imports_nothing():
    """flnorm's check names the same modules as Ray's ``optional_deps`` and gives Ray's verdict
    (missing or not); a real local start then leaves aiohttp unimported in the driver."""
    import ast
    import subprocess
    import sys

    import ray.dashboard
    from ray._private.utils import get_dashboard_dependency_error

    from flnorm.runner import simulation

    source = (os.path.dirname(ray.dashboard.__file__) + "/optional_deps.py")
    tree = ast.parse(open(source).read())
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert tops == set(simulation.DASHBOARD_DEPENDENCIES)
    assert (simulation.missing_dashboard_dependency() is None) == (get_dashboard_dependency_error() is None)
    code = ("import sys; from flnorm import ExperimentConfig; from flnorm.runner.simulation import start_ray; "
            "import ray; start_ray(ExperimentConfig(ray_cpus=1)); print('aiohttp' in sys.modules); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(simulation.missing_dashboard_dependency() is None)


def test_the_dependency_check_change_applies_only_to_its_ray_release(monkeypatch):
    from ray._private import utils

    from flnorm.runner import simulation

    original = utils.get_dashboard_dependency_error
    with simulation._quick_dependency_check():
        assert utils.get_dashboard_dependency_error is not original
    assert utils.get_dashboard_dependency_error is original
    monkeypatch.setattr(simulation, "RAY_VERSION", "0.0.0")
    with simulation._quick_dependency_check():
        assert utils.get_dashboard_dependency_error is original
