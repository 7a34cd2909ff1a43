"""Six changes to Flower's Ray backend for in-process simulations.

**A quicker Ray start under ``flwr run``.** Where Flower's backend starts Ray itself (the
simulation process of ``flwr run .``; ``flnorm run`` starts Ray before, in
``simulation.start_ray``), a local Ray starts with ``flnorm.runner.ray_start``'s changes
and without Flower's ``runtime_env``: Flower passes the driver's ``PYTHONPATH`` that way,
and a job with a runtime environment cannot use the workers Ray starts with it (they
start without one), so the actors waited for new processes. Workers of a local Ray
inherit the driver's environment, where Flower's code puts the same ``PYTHONPATH``.
Joining a cluster (an ``address`` in the backend's ``init_args``, or ``RAY_ADDRESS``),
Flower's ``runtime_env`` stays: other machines inherit nothing.

**A lighter actor class.** The pool's actors are ``flnorm.runner.actor.ClientActor``,
Flower's ``ClientAppActor`` without the 1 s import of Flower's whole simulation runtime
in every actor process (see that module).

**A phase's content sent once.** The pool's ``submit`` ships a message's large content to
Ray's object store once for all the messages that carry it (``flnorm.runner.shared_content``).

**A second message queued on every actor.** Flower 1.41 runs one ``worker`` thread per
actor and hands each actor one message at a time: a thread takes an idle actor from the
pool, submits the ClientApp call, blocks on its result, and only then returns the actor to
the pool (``BasicActorPool.submit`` / ``fetch_result_and_return_actor_to_pool``). Between
two clients an actor sits idle for a whole driver round trip (the reply deserialized, the
next message serialized, submitted and shipped): about 10 ms a call on two busy cores,
five times per actor in each phase of a 10-client round. Here every actor is listed
``QUEUE_DEPTH`` times in the pool (and Flower starts as many worker threads), so while an
actor runs one client the next client's message already waits in its Ray task queue. Ray
runs an actor's tasks one at a time, in submission order, so clients never share an
actor's model concurrently, and a node still gets its next message only after its reply
is in. At the end of a phase a queued message may wait for a busy actor while another
is idle: at most one client's work.

**Ray kept between the runs of a grid.** Flower shuts Ray down at the end of every
simulation (``RayBackend.terminate``); inside ``keep_ray()`` the next run reuses the
running Ray (``ray.init`` costs 3-5 s here). A run's actors that are not kept (below)
are killed, not asked to stop: Flower's ``terminate`` task would queue behind the work
already on an interrupted run's actors.

**Actors kept between the runs of a grid.** Inside ``keep_ray()`` a run that ends with
every actor back in its pool (no client call in flight) parks its actors, and the next
run asking for the same per-client resources takes them instead of starting new ones.
A new actor is a new Python process that imports torch, Flower and the data before its
first client, seconds of every grid cell's round 1 (README, Performance). An actor holds no
run's state: Flower passes the ClientApp, the message and the client's context with
every call, and the ClientApp's per-process caches (dataset, model object, partitions)
are keyed by the run's config. Parked actors are checked alive before reuse; an
interrupted run's actors, or parked ones that fail the check, are killed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from flwr.app import Message
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool

from flnorm.runner.actor import ClientActor
from flnorm.runner.ray_start import export_module_path, start_up_changes
from flnorm.runner.shared_content import SharedContents

QUEUE_DEPTH = 2
CALLS_WAIT = 10.0  # seconds the calls of killed actors get to fail before Ray stops
READY_WAIT = 10.0  # seconds parked actors get to answer before they are replaced
_flower_terminate = RayBackend.terminate
_keep_ray = False
# Inside keep_ray(): the last run's actors, with the per-client resources they were made with.
_parked: tuple[dict[str, Any], list[Any]] | None = None


def _init_ray(self: RayBackend, backend_config: dict[str, Any]) -> None:
    """``RayBackend.init_ray``: a local Ray started with flnorm's start-up changes, no runtime env."""
    if ray.is_initialized():
        return
    init_args = {"include_dashboard": False, **(backend_config.get(self.init_args_key) or {})}
    pythonpath = export_module_path()  # as Flower's code does
    local = not (init_args.get("address") or os.environ.get("RAY_ADDRESS"))
    if not local:
        init_args["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    with start_up_changes(local=local):
        ray.init(**init_args)


def _build(self: RayBackend, app_fn: Callable[[], Any]) -> None:
    """``RayBackend.build`` with flnorm's actor class, each actor listed ``QUEUE_DEPTH`` times."""
    pool = BasicActorPool(
        actor_type=ClientActor, client_resources=self.client_resources, actor_kwargs=self.actor_kwargs
    )
    reused = _unpark(self.client_resources, pool.actors_capacity) if not self.actor_kwargs else None
    if reused:
        pool.pool, pool.num_actors = reused, len(reused)
    else:
        pool.add_actors_to_pool(pool.actors_capacity)
    self.pool = pool
    self.app_fn = app_fn
    actors = list(pool.pool)
    pool.pool = [actor for _ in range(QUEUE_DEPTH) for actor in actors]
    pool.num_actors = len(pool.pool)  # Flower starts one worker thread per entry
    pool.submit = _sharing_submit(pool.submit, SharedContents())


def _sharing_submit(flower_submit: Callable[..., Any], shared: SharedContents) -> Callable[..., Any]:
    """``BasicActorPool.submit`` that sends a large content once (``flnorm.runner.shared_content``)."""

    def submit(actor_fn: Callable[..., Any], job: tuple[Any, Message, str, Any]) -> Any:
        app_fn, message, cid, context = job
        split = shared.split(message)
        if split is None:
            return flower_submit(actor_fn, job)
        light, content = split
        return flower_submit(
            lambda actor, *_: actor.run_with_content.remote(app_fn, light, content, cid, context), job
        )

    return submit


def _terminate(self: RayBackend) -> None:
    pool = self.pool
    if pool is not None:
        pool.submit = _refuse  # an interrupted run's workers may still pick up a message
        actors = list({id(a): a for a in [*pool.pool, *pool._future_to_actor.values()]}.values())
        if _keep_ray and not pool._future_to_actor and not self.actor_kwargs:
            _park(self.client_resources, actors)  # every call answered: the actors are idle
        else:
            _kill(actors)
            _await_calls(pool)
        pool.pool = []
    if not _keep_ray:
        _flower_terminate(self)


def _kill(actors: list[Any]) -> None:
    for actor in actors:
        ray.kill(actor, no_restart=True)


def _park(resources: dict[str, Any], actors: list[Any]) -> None:
    global _parked
    if _parked is not None:  # (not taken by a run in between)
        _kill(_parked[1])
    _parked = (dict(resources), actors)


def _unpark(resources: dict[str, Any], count: int) -> list[Any] | None:
    """The parked actors if they were made with ``resources``, are ``count``, and answer."""
    global _parked
    if _parked is None:
        return None
    (made_with, actors), _parked = _parked, None
    if made_with == resources and len(actors) == count and _answer(actors):
        return actors
    _kill(actors)
    return None


def _answer(actors: list[Any]) -> bool:
    """Whether every actor answers Ray's built-in ready call within ``READY_WAIT`` seconds."""
    calls = [actor.__ray_ready__.remote() for actor in actors]
    done, _ = ray.wait(calls, num_returns=len(calls), timeout=READY_WAIT)
    if len(done) < len(calls):
        return False
    try:
        ray.get(done)
    except ray.exceptions.RayError:  # the actor died (its process exited or was killed)
        return False
    return True


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the simulation engine is stopping; no more client calls")


def _await_calls(pool: BasicActorPool) -> None:
    """Wait until Flower's worker threads are out of their ``ray.get`` on killed actors.

    An interrupted run stops Ray while workers still wait on client calls; a ``ray.get``
    that Ray shuts down under never returns, and the process then hangs at exit joining
    that thread. The calls of killed actors fail within moments; each worker then takes
    its future out of ``_future_to_actor``.
    """
    deadline = time.monotonic() + CALLS_WAIT
    while pool._future_to_actor and time.monotonic() < deadline:
        time.sleep(0.01)


def changes() -> list[tuple[object, str, object]]:
    """``(owner, attribute, replacement)`` for each method of Flower's Ray backend replaced here
    (applied and undone by ``flnorm.runner.engine``)."""
    return [(RayBackend, "init_ray", _init_ray), (RayBackend, "build", _build), (RayBackend, "terminate", _terminate)]


def keeping_ray() -> bool:
    """Whether simulations leave Ray running (inside ``keep_ray()``)."""
    return _keep_ray


@contextmanager
def keep_ray() -> Iterator[None]:
    """Keep Ray, and the last run's idle actors, between the simulations started inside;
    stop both at the end.

    The first simulation's Ray settings (``ray_cpus``) hold for all of them.
    """
    global _keep_ray, _parked
    _keep_ray, outer = True, _keep_ray
    try:
        yield
    finally:
        _keep_ray = outer
        if not outer:
            parked, _parked = _parked, None
            if ray.is_initialized():
                if parked is not None:  # killed, not left to notice Ray's shutdown on their own
                    _kill(parked[1])
                ray.shutdown()
