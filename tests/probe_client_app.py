"""A ClientApp that reports on the process it runs in, for the actor tests.

It imports nothing of Flower's beyond what a ClientApp needs, so what it sees in
``sys.modules`` was imported by the actor process itself.
"""

import os
import sys

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({
        "pid": os.getpid(),
        "flwr_simulation_imported": int("flwr.simulation" in sys.modules),
        "partition_id": int(context.node_config["partition-id"]),
    })
    context.state["seen"] = MetricRecord({"calls": 1})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("threads")
def threads(msg: Message, context: Context) -> Message:
    """What flnorm's ClientApp would give torch here: the actor's CPUs."""
    from clients.client_app import actor_cpus

    return Message(RecordDict({"metrics": MetricRecord({"actor_cpus": actor_cpus() or 0})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    raise RuntimeError("injected failure in train")
