"""flnorm's Flower ClientApp (Message API).

Every message carries the run's experiment in its ``experiment`` record and the
strategy's instructions in its ``config`` record (``flnorm.protocol``); a client refuses
instruction keys its message type does not define. The client's partition comes from
``context.node_config`` (``partition-id``, ``num-partitions``), set by the simulation
engine or by ``flower-supernode --node-config``; a node with ``data-path=/site.npz``
trains on that file instead (``flnorm.data.site``), ``partition-id`` then only naming
the client. The client's own tensors (its BN, and what its strategy keeps local) persist
across rounds in ``context.state``: FedBN/SiloBN train with their BN, ``local`` with its
whole model, and every client reports a personalized accuracy with them.
"""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flnorm.bn.precise import moments_to_arrays
from flnorm.config import ExperimentConfig
from flnorm.protocol import (
    ACCEPTED, BN_FROZEN, BN_LAYERS, BN_MOMENTS, CLIENT, CUDA_DEVICES, DOMAIN_CORRECT, DOMAIN_N, DOMAIN_PERSONAL_CORRECT,
    EXPERIMENT, INSTRUCTIONS, METRICS, MODEL, MOMENTS, NUM_EXAMPLES, PLACEMENT, PROXIMAL_MU, RAY_NODE,
    SERVER_ROUND,
)
from flnorm.records import torch_state
from flnorm.runner.engine import adopt_in_flower_simulation
from flnorm.task import ClientTask, personal_keys

OWN_STATE = "flnorm.own"  # the client's own tensors (BN, local keys) in context.state

app = ClientApp()
adopt_in_flower_simulation()  # under `flwr run`; see flnorm.runner.engine


@lru_cache(maxsize=8)
def _parse(items: tuple[tuple[str, object], ...]) -> ExperimentConfig:
    return ExperimentConfig.from_flat(dict(items))


def instructions(msg: Message) -> ConfigRecord:
    """The strategy's instructions, after checking every key is defined for this message type."""
    config: ConfigRecord = msg.content[INSTRUCTIONS]
    accepted = ACCEPTED[msg.metadata.message_type]
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(
            f"{msg.metadata.message_type} message carries instruction keys {unknown} that it does not "
            f"define (valid: {sorted(accepted)}); see flnorm.protocol"
        )
    return config


def _task(msg: Message, context: Context) -> tuple[ClientTask, ConfigRecord]:
    cfg = _parse(tuple(sorted(msg.content[EXPERIMENT].items())))
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if num_partitions != cfg.clients:
        raise ValueError(
            f"node has num-partitions={num_partitions} but the run has clients={cfg.clients}"
        )
    data_path = context.node_config.get("data-path")
    task = ClientTask(cfg, partition_id, str(data_path) if data_path else None, threads=actor_cpus())
    return task, instructions(msg)


@lru_cache(maxsize=1)
def actor_cpus() -> int | None:
    """The CPUs Ray gave this process's actor, or None outside a Ray actor (once per process).

    In a simulation the actor's CPUs come from ``--num-cpus`` (``flnorm run``) or from
    ``client-resources-num-cpus`` (``flwr run``'s federation config): torch's threads
    follow what Ray actually assigned. A SuperNode's ClientApp process is no Ray actor
    (Ray is not even imported there) and uses the run's ``num-cpus``.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    runtime = ray.get_runtime_context()
    if runtime.get_actor_id() is None:  # a driver or a task, no actor
        return None
    cpus = runtime.get_assigned_resources().get("CPU", 0)
    return max(1, round(cpus)) if cpus else None


def _kept(context: Context, keys: frozenset[str]) -> dict | None:
    """The client's own tensors among ``keys``, or None before it has trained."""
    if OWN_STATE not in context.state:
        return None
    kept = torch_state(context.state[OWN_STATE])
    return {k: v for k, v in kept.items() if k in keys}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model (and the client's own BN where it stays local), train, reply."""
    task, config = _task(msg, context)
    task.load(torch_state(msg.content[MODEL]), overlay=_kept(context, task.local_keys))
    server_round = int(config[SERVER_ROUND])
    metrics = task.fit(
        server_round,
        proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
        bn_frozen=bool(config.get(BN_FROZEN, False)),
    )
    own = task.own_state()
    if own:
        context.state[OWN_STATE] = ArrayRecord(own)
    metrics[SERVER_ROUND] = server_round
    content = RecordDict({
        MODEL: ArrayRecord(task.shared_state()), METRICS: MetricRecord(metrics), PLACEMENT: placement(),
    })
    return Message(content=content, reply_to=msg)


def placement() -> ConfigRecord:
    """Where this client runs: its Ray node (inside a Ray actor) and the GPUs its process sees."""
    ray = sys.modules.get("ray")  # loaded in a Ray actor; never imported here for a SuperNode
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    return ConfigRecord({RAY_NODE: node, CUDA_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES", "")})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Global and personalized loss/accuracy on this client's test split.

    Global: the global model with the run's BN evaluation mode (global, precise, batch,
    or ``local`` = this client's statistics). Personalized: the global model with this
    client's own BN state (FedBN: its BN modules; otherwise its running statistics).
    A multi-domain dataset adds the counts per domain (``DOMAIN_N`` ...).
    """
    task, config = _task(msg, context)
    received = torch_state(msg.content[MODEL])
    mode = task.cfg.bn_eval_mode
    own = _kept(context, personal_keys(task.cfg))
    task.load(received, overlay=own if mode == "local" else None)
    start = time.perf_counter()
    result = task.test(bn_batch_stats=(mode == "batch"))
    personal = result
    if own:
        task.load(received, overlay=own)
        personal = task.test()
    seconds = time.perf_counter() - start
    metrics = {
        "test_loss": result.loss if result.n else 0.0,
        "test_accuracy": result.accuracy if result.n else 0.0,
        "personal_loss": personal.loss if personal.n else 0.0,
        "personal_accuracy": personal.accuracy if personal.n else 0.0,
        NUM_EXAMPLES: result.n,
        CLIENT: task.client,
        SERVER_ROUND: int(config[SERVER_ROUND]),
        "eval_seconds": seconds,
    }
    if result.group_n:  # a multi-domain dataset: the same counts per domain
        metrics.update({DOMAIN_N: list(result.group_n), DOMAIN_CORRECT: list(result.group_correct),
                        DOMAIN_PERSONAL_CORRECT: list(personal.group_correct)})
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(BN_MOMENTS.split(".", 1)[1])
def bn_moments(msg: Message, context: Context) -> Message:
    """PreciseBN pass: per-BN-layer (n, mean, var) of the received model over local data."""
    task, config = _task(msg, context)
    task.load(torch_state(msg.content[MODEL]))
    layers = config.get(BN_LAYERS)
    moments = {k: Array(v) for k, v in moments_to_arrays(task.moments(layers)).items()}
    metrics = MetricRecord({NUM_EXAMPLES: len(task.data.train_y), CLIENT: task.client})
    return Message(RecordDict({MOMENTS: ArrayRecord(moments), METRICS: metrics}), reply_to=msg)
