"""Where start-up goes: a timeline of one ``flnorm run`` from the command to round 1.

Runs ``flnorm run`` in this fresh process (its arguments after ``--``; default: the paper
CNN on mnist5k, 10 clients, classes-2, 3 rounds) and prints, in seconds since the process
started, when each phase began and ended: torch and flnorm imported, the partition
prepared, Flower's modules imported (in a thread, overlapping ``ray.init``), ``ray.init``,
the Ray actors created, the first message submitted to an actor, the first reply stored (the actors have imported torch and flwr.clientapp
and trained one client), and the end of each round.

    .venv/bin/python experiments/startup_timeline.py
    .venv/bin/python experiments/startup_timeline.py -- --clients 100 --fraction-train 0.1
"""

from __future__ import annotations

import time

T0 = time.time()

import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def mark(what: str) -> None:
    print(f"{time.time() - T0:7.2f} s  {what}", flush=True)


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` with a wrapper that marks its start and end."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label}: start")
        result = inner(*args, **kwargs)
        mark(f"{label}: end")
        return result

    setattr(owner, name, wrapper)


def instrument_flower_side() -> None:
    """Mark the actors' creation and the first replies (after Flower's modules loaded).

    The functions wrapped are flnorm's engine changes, which the run applies
    (``flnorm.runner.engine``) after this."""
    from flnorm.runner import dispatch, ray_backend

    timed(ray_backend, "_build", "Ray actors created")
    store = dispatch._store_message_res
    count = [0]

    def store_reply(self: Any, message: Any) -> Any:
        count[0] += 1
        if count[0] in (1, 2):
            mark(f"reply {count[0]} stored (an actor imported torch + flwr.clientapp and trained a client)")
        return store(self, message)

    dispatch._store_message_res = store_reply

    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    submit, submitted = BasicActorPool.submit, [0]

    def first_submit(self: Any, *args: Any, **kwargs: Any) -> Any:
        submitted[0] += 1
        if submitted[0] == 1:
            mark("message 1 submitted to an actor (the ServerApp has started round 1)")
        return submit(self, *args, **kwargs)

    BasicActorPool.submit = first_submit


def main() -> None:
    import pandas as pd

    from flnorm import cli
    from flnorm.runner import simulation

    mark("torch, flnorm imported")
    timed(simulation, "prepare", "dataset and partition prepared")
    timed(simulation, "start_ray", "ray.init")
    import_flower = simulation._import_flower_side

    def import_and_instrument() -> Any:
        mark("Flower modules (thread): start")
        result = import_flower()
        mark("Flower modules (thread): end")
        instrument_flower_side()
        return result

    simulation._import_flower_side = import_and_instrument
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if not any(a.startswith("--rounds") for a in args):
        args += ["--rounds", "3"]
    if not any(a.startswith("--partition") for a in args):
        args += ["--partition", "classes-2"]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/run"
        if cli.main(["run", *args, "--out", out]) != 0:
            sys.exit("flnorm run failed")
        metrics = pd.read_csv(f"{out}/metrics.csv")
    for _, row in metrics.iterrows():
        print(f"{row['timestamp'] - T0:7.2f} s  round {int(row['round'])} ended ({row['seconds']:.2f} s)")
    steady = metrics["seconds"].iloc[1:].mean()
    print(f"start-up (command to the end of round 1, less one steady round): "
          f"{metrics['timestamp'].iloc[0] - T0 - steady:.2f} s")


if __name__ == "__main__":
    main()
