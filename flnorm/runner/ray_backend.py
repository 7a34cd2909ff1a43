"""Three changes to Flower's Ray backend for in-process simulations.

**A lighter actor class.** The pool's actors are ``flnorm.runner.actor.ClientActor``,
Flower's ``ClientAppActor`` without the 1 s import of Flower's whole simulation runtime
in every actor process (see that module).

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
simulation (``RayBackend.terminate``); inside ``keep_ray()`` only the run's actors are
stopped and the next run reuses the running Ray (``ray.init`` costs 3-5 s here). Actors
are killed, not asked to stop: Flower's ``terminate`` task would queue behind the work
already on an interrupted run's actors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool

from flnorm.runner.actor import ClientActor

QUEUE_DEPTH = 2
CALLS_WAIT = 10.0  # seconds the calls of killed actors get to fail before Ray stops
_flower_terminate = RayBackend.terminate
_keep_ray = False


def _build(self: RayBackend, app_fn: Callable[[], Any]) -> None:
    """``RayBackend.build`` with flnorm's actor class, each actor listed ``QUEUE_DEPTH`` times."""
    pool = BasicActorPool(
        actor_type=ClientActor, client_resources=self.client_resources, actor_kwargs=self.actor_kwargs
    )
    pool.add_actors_to_pool(pool.actors_capacity)
    self.pool = pool
    self.app_fn = app_fn
    actors = list(pool.pool)
    pool.pool = [actor for _ in range(QUEUE_DEPTH) for actor in actors]
    pool.num_actors = len(pool.pool)  # Flower starts one worker thread per entry


def _terminate(self: RayBackend) -> None:
    pool = self.pool
    if pool is not None:
        pool.submit = _refuse  # an interrupted run's workers may still pick up a message
        actors = [*pool.pool, *pool._future_to_actor.values()]
        for actor in {id(actor): actor for actor in actors}.values():  # once, not once per slot
            ray.kill(actor, no_restart=True)
        _await_calls(pool)
        pool.pool = []
    if not _keep_ray:
        _flower_terminate(self)


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
    return [(RayBackend, "build", _build), (RayBackend, "terminate", _terminate)]


def keeping_ray() -> bool:
    """Whether simulations leave Ray running (inside ``keep_ray()``)."""
    return _keep_ray


@contextmanager
def keep_ray() -> Iterator[None]:
    """Keep Ray running between the simulations started inside; shut it down at the end.

    The first simulation's Ray settings (``ray_cpus``) hold for all of them.
    """
    global _keep_ray
    _keep_ray, outer = True, _keep_ray
    try:
        yield
    finally:
        _keep_ray = outer
        if not outer and ray.is_initialized():
            ray.shutdown()
