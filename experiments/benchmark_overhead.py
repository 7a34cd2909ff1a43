"""Framework overhead: flnorm's Flower simulation vs a plain PyTorch loop, same work.

Both do, per round, for every client: load the global weights, run ``--local-steps``
SGD steps of ``--batch-size`` on its data, then the weights are averaged and the global
model is evaluated on every client's test split and on the whole test set. The plain loop
is one process with all torch threads; flnorm runs the clients in Ray actors.

    .venv/bin/python experiments/benchmark_overhead.py --rounds 12

Prints start-up seconds, steady-state seconds per round (mean over rounds 2..R), their
ratio flnorm / plain and training samples per second. Start-up is measured twice: from the
``run_experiment`` call (torch already imported) and from the ``flnorm run`` command
(a fresh process, 3 rounds), each to the end of round 1, less one steady round. The plain loop runs before and
after flnorm; its steady figure is the mean of the two. On a CUDA machine both sides run
on the GPU (``--device auto``) and flnorm shares it between virtual clients
(``--num-gpus``, default 0.25: 4 clients per GPU); the benchmark then also prints
clients per GPU:

    .venv/bin/python experiments/benchmark_overhead.py --rounds 12 --num-gpus 0.5 --num-cpus 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

import torch
import torch.nn.functional as F

from flnorm import ExperimentConfig, run_experiment
from flnorm.data import load_dataset, load_partition
from flnorm.device import resolve_device
from flnorm.models import build_model
from flnorm.runner.malloc_arena import ONE_ARENA_ENV
from flnorm.training import evaluate
from flower_app import copy_app, free_port, run_config


PLAIN_PHASES = ("training", "aggregation", "evaluation: clients", "evaluation: test set")


def plain_loop(cfg: ExperimentConfig) -> tuple[float, list[float], dict[str, float]]:
    """A single-process PyTorch FedAvg loop; returns (start-up s, per-round s, mean s per
    steady round of each of ``PLAIN_PHASES``)."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset)
    part = load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - mean) / std).contiguous(memory_format=fmt)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm_spec, data.num_classes, data.input_shape, cfg.bias)
    model = model.to(device=device, memory_format=fmt)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = [tuple(t.to(device) for t in (data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te]))
               for tr, te in zip(part.train, part.test)]
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10) if cfg.precision == "fp16" else None
    startup = time.perf_counter() - t0
    rounds, phases = [], dict.fromkeys(PLAIN_PHASES, 0.0)

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    for rnd in range(cfg.rounds):
        start = time.perf_counter()
        states, sizes = [], []
        for k, (x, y, _, _) in enumerate(clients):
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            g = torch.Generator().manual_seed(1000 * rnd + k)
            for _ in range(cfg.local_steps):
                idx = torch.randint(len(y), (min(cfg.batch_size, len(y)),), generator=g).to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(prep(x[idx])), y[idx])
                opt.zero_grad()
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
            states.append({k2: v.detach().clone() for k2, v in model.state_dict().items()})
            sizes.append(len(y))
        trained = sync()
        total = sum(sizes)
        global_state = {
            key: (sum(s[key].double() * n for s, n in zip(states, sizes)) / total).to(states[0][key].dtype)
            for key in states[0]
        }
        model.load_state_dict(global_state)
        model.eval()
        aggregated = clients_evaluated = sync()
        if cfg.evaluates(rnd + 1):  # the same chunked evaluation as flnorm's (EVAL_BATCH)
            for _, _, xt, yt in clients:
                if len(yt):
                    evaluate(model, xt, yt, prep)
            clients_evaluated = sync()
            evaluate(model, test_x, test_y, prep)
        end = sync()
        rounds.append(end - start)
        if rnd > 0:
            for name, seconds in zip(PLAIN_PHASES, (trained - start, aggregated - trained,
                                                   clients_evaluated - aggregated, end - clients_evaluated)):
                phases[name] += seconds / (cfg.rounds - 1)
    return startup, rounds, phases


def flnorm_run(cfg: ExperimentConfig) -> tuple[float, list[float], dict[str, float]]:
    """flnorm's simulation; start-up = command to end of round 1, less one steady round.

    Also returns the mean seconds per steady round of each phase (``PhaseClock``)."""
    with tempfile.TemporaryDirectory() as tmp, PhaseClock() as clock:
        t0 = time.time()
        metrics = run_experiment(cfg.replace(out=str(Path(tmp) / "run")))
        clients = pd.read_csv(Path(tmp) / "run" / "clients.csv")
    rounds = metrics["seconds"].tolist()
    steady = statistics.fmean(rounds[1:])
    startup = float(metrics["timestamp"].iloc[0]) - t0 - steady
    return startup, rounds, clock.phases(clients, rounds, actors(cfg))


def actors(cfg: ExperimentConfig) -> int:
    """Ray actors the run had: as many clients as fit on this machine's CPUs at once."""
    return max(1, min(cfg.clients, (cfg.ray_cpus or os.cpu_count() or 1) // cfg.num_cpus))


class PhaseClock:
    """Times the phases of flnorm's rounds on the server (this process), by wrapping the
    functions of each phase while the block runs.

    A round's wall time (``metrics.csv``'s ``seconds``: recorder call to recorder call) is
    split into: the strategy's configure and aggregate calls; each phase's send-to-last-reply
    wait, of which the clients' own compute (``fit_seconds``/``eval_seconds`` of
    ``clients.csv``, summed and divided by the actors working in parallel) and the rest
    (Ray calls, (de)serialization, scheduling, an idle actor at a phase's end); the server's
    test-set evaluation; the recorder's rows and CSVs; the checkpoint write; and what is left.
    """

    def __init__(self) -> None:
        self.spent: dict[tuple[int, str], float] = {}
        self.round = 0
        self._undo: list[tuple[object, str, object]] = []

    def __enter__(self) -> PhaseClock:
        from flnorm.runner import monitor, recorder, server_app

        self._wrap(monitor.ReplyLog, "send_and_receive", lambda args: f"{_message_type(args[1])} phase")
        self._wrap(recorder.RoundRecorder, "union_eval", "server test-set evaluation")
        self._wrap(recorder.RoundRecorder, "__call__", "recorder")
        self._wrap(server_app, "save_checkpoint", "checkpoint write")
        build = server_app.build_strategy

        def build_and_wrap(*args: Any, **kwargs: Any) -> Any:
            strategy = build(*args, **kwargs)
            for name in ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate"):
                self._wrap(strategy, name, "strategy: configure + aggregate")
            return strategy

        self._undo.append((server_app, "build_strategy", build))
        server_app.build_strategy = build_and_wrap
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def _wrap(self, owner: object, name: str, label: str | Callable[[tuple], str]) -> None:
        inner = getattr(owner, name)
        self._undo.append((owner, name, vars(owner).get(name, _MISSING)))
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if name == "configure_train":  # wrapped on the strategy instance: args[0] is the round
                clock.round = int(args[0])
            if name == "send_and_receive":  # the messages may be a generator; label reads them
                args = (args[0], list(args[1]))
            key = (clock.round, label(args) if callable(label) else label)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                clock.spent[key] = clock.spent.get(key, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)

    def phases(self, clients: pd.DataFrame, rounds: list[float], n_actors: int) -> dict[str, float]:
        """Mean seconds per steady round (2..R) of each phase; the recorder less its evaluation."""
        steady = range(2, len(rounds) + 1)
        mean = {label: sum(self.spent.get((r, label), 0.0) for r in steady) / len(steady)
                for label in {label for _, label in self.spent}}
        rows = clients[clients["round"] >= 2]
        compute = {"train": rows["fit_seconds"].sum(), "evaluate": rows["eval_seconds"].sum()}
        out: dict[str, float] = {}
        for phase in ("train", "evaluate"):
            wall = mean.pop(f"{phase} phase", 0.0)
            own = compute[phase] / len(steady) / n_actors
            out[f"{phase}: clients' compute / {n_actors} actors"] = own
            out[f"{phase}: Ray calls, messages, waiting"] = wall - own
        out["strategy: configure + aggregate"] = mean.pop("strategy: configure + aggregate", 0.0)
        union = mean.pop("server test-set evaluation", 0.0)
        out["server test-set evaluation"] = union
        out["recorder: rows, CSVs, progress"] = mean.pop("recorder", 0.0) - union
        out["checkpoint write"] = mean.pop("checkpoint write", 0.0)
        out["other (between phases)"] = statistics.fmean(rounds[1:]) - sum(out.values())
        return out


_MISSING = object()


def _message_type(messages: list) -> str:
    return messages[0].metadata.message_type.split(".")[0] if messages else "empty"


def flwr_run_path(cfg: ExperimentConfig, timeout: float = 1800) -> list[float]:
    """The same run through ``flwr run .`` on a local simulation SuperLink; per-round seconds.

    The app is copied to a temporary directory (``flwr run`` packs the project directory),
    with its own ``FLWR_HOME`` and SuperLink ports; the federation has ``cfg.clients``
    SuperNodes of ``cfg.num_cpus`` CPUs. The local SuperLink's SuperExec polls as Flower's
    does by default, as under a ``flwr run .`` typed in a shell (not at the SuperNodes' short
    poll, ``flnorm.deploy.SUPERNODE_TASK_POLL``), with one malloc arena (``MALLOC_ARENA_MAX=1``,
    see ``flnorm.runner.malloc_arena``). The SuperLink is stopped by PID at the end.
    """
    import json
    import signal

    from flnorm.deploy import flower_env

    with tempfile.TemporaryDirectory() as tmp:
        app = copy_app(Path(tmp) / "app")
        ports = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
        env = flower_env(Path(tmp) / "home") | ports
        env = ONE_ARENA_ENV | env  # as the README runs `flwr run` (a user's own value wins)
        flwr = str(Path(sys.executable).parent / "flwr")

        def call(*args: str) -> str:
            return subprocess.run([flwr, *args], cwd=app, env=env, capture_output=True, text=True,
                                  check=True, timeout=timeout).stdout

        out = Path(tmp) / "run"
        try:
            submitted = json.loads(call("run", ".", "--run-config", run_config(cfg.replace(out=str(out))),
                                        "--federation-config",
                                        f"num-supernodes={cfg.clients} client-resources-num-cpus={cfg.num_cpus}",
                                        "--format", "json"))
            run_id, deadline = str(submitted["run-id"]), time.monotonic() + timeout

            def status() -> str:
                return json.loads(call("list", "--run-id", run_id, "--format", "json"))["runs"][0]["status"]

            # Watch for the final model rather than run a `flwr` process beside the run
            # (`flwr log --stream`, or `flwr list` every few seconds, takes CPU the run needs);
            # a run that fails writes none, so Flower is asked every 30 s.
            asked = time.monotonic()
            while not (out / "model.pt").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flwr run {run_id} not finished after {timeout} s")
                if time.monotonic() - asked > 30:
                    asked = time.monotonic()
                    if status().startswith("finished"):
                        break
                time.sleep(0.5)
            while not (state := status()).startswith("finished") and time.monotonic() < deadline:
                time.sleep(0.5)
            if state != "finished:completed":
                raise RuntimeError(f"flwr run {run_id}: {state}")
            return pd.read_csv(out / "metrics.csv")["seconds"].tolist()
        finally:
            for pid in _listeners([int(p) for p in ports.values()]):
                os.kill(pid, signal.SIGTERM)


def _listeners(ports: list[int]) -> list[int]:
    """PIDs listening on ``ports`` (the local SuperLink)."""
    import psutil

    return sorted({c.pid for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port in ports and c.pid})


def command_startup(cfg: ExperimentConfig, rounds: int = 3) -> float:
    """``flnorm run`` in a fresh process: spawn to the end of round 1, less one steady round."""
    args = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), f.name.replace("_", "-")
        if f.name not in ("out", "rounds"):
            args += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "flnorm.cli", "run", *args, "--rounds", str(rounds), "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = pd.read_csv(out / "metrics.csv")
    return float(metrics["timestamp"].iloc[0]) - t0 - statistics.fmean(metrics["seconds"].iloc[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--norm", default="none")
    parser.add_argument("--eval-every", type=int, default=1, help="both sides evaluate every N rounds")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="both sides in contiguous memory format")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda, for both sides")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16, for both sides")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs per flnorm virtual client")
    parser.add_argument("--queue-depth", type=int, default=None,
                        help="messages queued per Ray actor (flnorm.runner.ray_backend; 1 = Flower's own)")
    parser.add_argument("--num-gpus", type=float, default=None,
                        help="GPU fraction per flnorm virtual client (default: 0.25 with CUDA, else 0)")
    parser.add_argument("--no-flwr-run", dest="flwr_run", action="store_false",
                        help="skip the flwr run path (a local SuperLink)")
    args = parser.parse_args()
    from flnorm.runner import ray_backend

    if args.queue_depth is not None:
        ray_backend.QUEUE_DEPTH = args.queue_depth
    cuda = resolve_device(args.device).type == "cuda"
    num_gpus = args.num_gpus if args.num_gpus is not None else (0.25 if cuda else 0.0)
    cfg = ExperimentConfig(
        norm=args.norm, rounds=args.rounds, clients=args.clients, local_steps=args.local_steps,
        batch_size=args.batch_size, partition="classes-2", eval_every=args.eval_every,
        channels_last=args.channels_last, device=args.device, precision=args.precision,
        num_cpus=args.num_cpus, num_gpus=num_gpus,
    )
    # plain, flnorm, plain again: this VM's speed drifts by 10-30 % over minutes, so the
    # plain loop brackets the flnorm run and its steady figure is the mean of both runs.
    plain_start, plain_rounds, plain_phases = plain_loop(cfg)
    fl_start, fl_rounds, fl_phases = flnorm_run(cfg)
    _, plain_after, plain_phases_after = plain_loop(cfg)
    cmd_start = command_startup(cfg)
    flwr_rounds = flwr_run_path(cfg) if args.flwr_run else []
    plain_each = [statistics.fmean(plain_rounds[1:]), statistics.fmean(plain_after[1:])]
    plain_steady = statistics.fmean(plain_each)
    fl_steady = statistics.fmean(fl_rounds[1:])
    samples = cfg.clients * cfg.local_steps * cfg.batch_size  # training samples per round
    where = f"CUDA ({torch.cuda.get_device_name()})" if cuda else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"\nwork per round: {cfg.clients} clients x {cfg.local_steps} steps x batch {cfg.batch_size}, "
          f"paper CNN ({cfg.norm}), {cfg.dataset}, {cfg.rounds} rounds, {cfg.precision}, {where}")
    print(f"{'':24}{'flnorm':>10}{'plain':>10}{'ratio':>8}")
    print(f"{'start-up s (in process)':24}{fl_start:10.2f}{plain_start:10.2f}")
    print(f"{'start-up s (command)':24}{cmd_start:10.2f}")
    print(f"{'steady s/round':24}{fl_steady:10.3f}{plain_steady:10.3f}{fl_steady / plain_steady:8.2f}")
    print(f"{'overhead ms/round':24}{1000 * (fl_steady - plain_steady):10.0f}")
    if flwr_rounds:
        flwr_steady = statistics.fmean(flwr_rounds[1:])
        print(f"{'flwr run . s/round':24}{flwr_steady:10.3f}{plain_steady:10.3f}{flwr_steady / plain_steady:8.2f}")
        print(f"{'flwr run . round 1 s':24}{flwr_rounds[0]:10.2f}")
    print(f"{'train samples/s':24}{samples / fl_steady:10.0f}{samples / plain_steady:10.0f}")
    print(f"{'round 1 s':24}{fl_rounds[0]:10.2f}{plain_rounds[0]:10.2f}")
    print(f"plain steady s/round before / after the flnorm run: {plain_each[0]:.3f} / {plain_each[1]:.3f}")
    print(f"messages queued per Ray actor: {ray_backend.QUEUE_DEPTH}")
    print("\none steady round by phase, ms (flnorm: server-side timers and the clients' own times;")
    print("plain: the same steps in one process, mean of its two runs)")
    for name, seconds in fl_phases.items():
        print(f"  flnorm {name:44}{1000 * seconds:8.0f}")
    for name in PLAIN_PHASES:
        print(f"  plain  {name:44}{500 * (plain_phases[name] + plain_phases_after[name]):8.0f}")
    if cuda:
        per_gpu = int(1 / num_gpus) if num_gpus > 0 else "all"
        print(f"flnorm virtual clients per GPU: {per_gpu} (--num-gpus {num_gpus}), "
              f"{args.num_cpus} CPU each, {torch.cuda.device_count()} GPU(s)")


if __name__ == "__main__":
    main()
