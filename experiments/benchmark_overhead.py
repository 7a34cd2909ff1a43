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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import torch
import torch.nn.functional as F

from flnorm import ExperimentConfig, run_experiment
from flnorm.data import load_dataset, load_partition
from flnorm.device import resolve_device
from flnorm.models import build_model
from flnorm.training import evaluate


def plain_loop(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """A single-process PyTorch FedAvg loop; returns (start-up s, per-round s)."""
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
    startup = time.perf_counter() - t0
    rounds = []
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
                loss = F.cross_entropy(model(prep(x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({k2: v.detach().clone() for k2, v in model.state_dict().items()})
            sizes.append(len(y))
        total = sum(sizes)
        global_state = {
            key: (sum(s[key].double() * n for s, n in zip(states, sizes)) / total).to(states[0][key].dtype)
            for key in states[0]
        }
        model.load_state_dict(global_state)
        model.eval()
        if cfg.evaluates(rnd + 1):  # the same chunked evaluation as flnorm's (EVAL_BATCH)
            for _, _, xt, yt in clients:
                if len(yt):
                    evaluate(model, xt, yt, prep)
            evaluate(model, test_x, test_y, prep)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rounds.append(time.perf_counter() - start)
    return startup, rounds


def flnorm_run(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """flnorm's simulation; start-up = command to end of round 1, less one steady round."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        metrics = run_experiment(cfg.replace(out=str(Path(tmp) / "run")))
    rounds = metrics["seconds"].tolist()
    steady = statistics.fmean(rounds[1:])
    startup = float(metrics["timestamp"].iloc[0]) - t0 - steady
    return startup, rounds


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
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs per flnorm virtual client")
    parser.add_argument("--queue-depth", type=int, default=None,
                        help="messages queued per Ray actor (flnorm.runner.ray_backend; 1 = Flower's own)")
    parser.add_argument("--num-gpus", type=float, default=None,
                        help="GPU fraction per flnorm virtual client (default: 0.25 with CUDA, else 0)")
    args = parser.parse_args()
    from flnorm.runner import ray_backend

    if args.queue_depth is not None:
        ray_backend.QUEUE_DEPTH = args.queue_depth
    cuda = resolve_device(args.device).type == "cuda"
    num_gpus = args.num_gpus if args.num_gpus is not None else (0.25 if cuda else 0.0)
    cfg = ExperimentConfig(
        norm=args.norm, rounds=args.rounds, clients=args.clients, local_steps=args.local_steps,
        batch_size=args.batch_size, partition="classes-2", eval_every=args.eval_every,
        channels_last=args.channels_last, device=args.device, num_cpus=args.num_cpus, num_gpus=num_gpus,
    )
    # plain, flnorm, plain again: this VM's speed drifts by 10-30 % over minutes, so the
    # plain loop brackets the flnorm run and its steady figure is the mean of both runs.
    plain_start, plain_rounds = plain_loop(cfg)
    fl_start, fl_rounds = flnorm_run(cfg)
    _, plain_after = plain_loop(cfg)
    cmd_start = command_startup(cfg)
    plain_each = [statistics.fmean(plain_rounds[1:]), statistics.fmean(plain_after[1:])]
    plain_steady = statistics.fmean(plain_each)
    fl_steady = statistics.fmean(fl_rounds[1:])
    samples = cfg.clients * cfg.local_steps * cfg.batch_size  # training samples per round
    where = f"CUDA ({torch.cuda.get_device_name()})" if cuda else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"\nwork per round: {cfg.clients} clients x {cfg.local_steps} steps x batch {cfg.batch_size}, "
          f"paper CNN ({cfg.norm}), {cfg.dataset}, {cfg.rounds} rounds, {where}")
    print(f"{'':24}{'flnorm':>10}{'plain':>10}{'ratio':>8}")
    print(f"{'start-up s (in process)':24}{fl_start:10.2f}{plain_start:10.2f}")
    print(f"{'start-up s (command)':24}{cmd_start:10.2f}")
    print(f"{'steady s/round':24}{fl_steady:10.3f}{plain_steady:10.3f}{fl_steady / plain_steady:8.2f}")
    print(f"{'train samples/s':24}{samples / fl_steady:10.0f}{samples / plain_steady:10.0f}")
    print(f"{'round 1 s':24}{fl_rounds[0]:10.2f}{plain_rounds[0]:10.2f}")
    print(f"plain steady s/round before / after the flnorm run: {plain_each[0]:.3f} / {plain_each[1]:.3f}")
    print(f"messages queued per Ray actor: {ray_backend.QUEUE_DEPTH}")
    if cuda:
        per_gpu = int(1 / num_gpus) if num_gpus > 0 else "all"
        print(f"flnorm virtual clients per GPU: {per_gpu} (--num-gpus {num_gpus}), "
              f"{args.num_cpus} CPU each, {torch.cuda.device_count()} GPU(s)")


if __name__ == "__main__":
    main()
