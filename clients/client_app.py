"""flnorm's Flower ClientApp (Message API).

Each message carries the experiment config (``ExperimentConfig.to_flat()``) in its
ConfigRecord; the client's partition comes from ``context.node_config``
(``partition-id``, ``num-partitions``), set by the simulation engine or by
``flower-supernode --node-config``.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flnorm.config import ExperimentConfig
from flnorm.task import ClientTask

# Keys Flower strategies add to the config next to the experiment's.
STRATEGY_KEYS = ("server-round", "proximal-mu")

app = ClientApp()


@lru_cache(maxsize=8)
def _parse(items: tuple[tuple[str, object], ...]) -> ExperimentConfig:
    return ExperimentConfig.from_flat(dict(items))


def _task(msg: Message, context: Context) -> tuple[ClientTask, ConfigRecord]:
    config: ConfigRecord = msg.content["config"]
    cfg = _parse(tuple(sorted((k, v) for k, v in config.items() if k not in STRATEGY_KEYS)))
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if num_partitions != cfg.clients:
        raise ValueError(
            f"node has num-partitions={num_partitions} but the run has clients={cfg.clients}"
        )
    task = ClientTask(cfg, partition_id)
    task.load(msg.content["arrays"].to_torch_state_dict())
    return task, config


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model, train locally, reply with the new state and metrics."""
    task, config = _task(msg, context)
    metrics = task.fit(int(config["server-round"]), float(config.get("proximal-mu", 0.0)))
    metrics["server-round"] = int(config["server-round"])
    content = RecordDict({"arrays": ArrayRecord(task.state()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this client's test split."""
    task, config = _task(msg, context)
    metrics = task.test()
    metrics["server-round"] = int(config["server-round"])
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
