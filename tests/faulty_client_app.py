"""flnorm's ClientApp with injected faults, for the fault-tolerance tests.

Client 1 raises in round 2; client 2 sends NaN weights in round 3; everything else is
flnorm's own handlers.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import client_app as flnorm

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    client = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    if client == 1 and server_round == 2:
        raise RuntimeError("injected client failure")
    reply = flnorm.train(msg, context)
    if client == 2 and server_round == 3:
        arrays = reply.content["arrays"]
        poisoned = {k: a.numpy().copy() for k, a in arrays.items()}
        first_float = next(k for k, v in poisoned.items() if np.issubdtype(v.dtype, np.floating))
        poisoned[first_float][...] = np.nan
        reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in poisoned.items()})
    return reply


app.evaluate()(flnorm.evaluate)
