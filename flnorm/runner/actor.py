"""The Ray actor that runs flnorm's virtual clients: Flower's ``ClientAppActor``, lighter to import.

Ray imports an actor class's module in every actor process. Flower's actor lives in
``flwr.simulation.ray_transport.ray_actor``, and importing it runs
``flwr/simulation/__init__.py``, which loads the whole simulation runtime (ServerApp
machinery, LinkState, the SQL object store): about 1 s of CPU per actor, before its
first client, of which an actor needs nothing. This module imports only what a client
run needs (``flwr.app``, ``flwr.clientapp``); ``run`` and ``terminate`` are Flower's
(``VirtualClientEngineActor`` in Flower 1.41), so the backend's pool drives it
unchanged.

``run`` reports no Ray task events: Ray's GCS keeps the events of up to 100,000 tasks
for its state API and dashboard (neither is used here), about 3.7 KB a task, so with
events on its memory grows with every client call (0.37 MiB a round at 100 clients a
round) for the first 100,000 calls.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError

from flnorm.runner.shared_content import with_content


@ray.remote
class ClientActor:
    """Runs one ClientApp call per ``run``; Ray runs an actor's calls one at a time."""

    @ray.method(enable_task_events=False)
    def run(
        self, client_app_fn: Callable[[], ClientApp], message: Message, cid: str, context: Context
    ) -> tuple[str, Message, Context]:
        """Pass ``message`` through the ClientApp; return ``(cid, reply, context)``."""
        try:
            app = client_app_fn()
            reply = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:  # noqa: BLE001 - Flower's contract: wrapped, re-raised
            raise ClientAppException(str(ex)) from ex
        return cid, reply, context

    @ray.method(enable_task_events=False)
    def run_with_content(
        self, client_app_fn: Callable[[], ClientApp], message: Message, content: RecordDict, cid: str,
        context: Context,
    ) -> tuple[str, Message, Context]:
        """``run`` for a message sent without its content (``flnorm.runner.shared_content``):
        Ray resolves the stored ``content`` and the message is whole again before the ClientApp."""
        return self.run(client_app_fn, with_content(message, content), cid, context)

    def terminate(self) -> None:
        """Stop this actor (the backend's pool calls it at the end of a run)."""
        ray.actor.exit_actor()
