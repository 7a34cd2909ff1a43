"""Framework overhead: flnorm's Flower simulation vs a plain PyTorch loop, same work.

Both do, per round, for every client: load the global weights, run ``--local-steps``
SGD steps of ``--batch-size`` on its data, then the weights are averaged and the global
model is evaluated on every client's test split and on the whole test set. The plain loop
is one process with all torch threads; flnorm runs the clients in Ray actors.

    .venv/bin/python experiments/benchmark_overhead.py --rounds 12

Prints start-up seconds, steady-state seconds per round (mean over rounds 2..R) and
their ratio flnorm / plain.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flnorm import ExperimentConfig, run_experiment
from flnorm.data import load_dataset, load_partition
from flnorm.models import build_model


def plain_loop(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """A single-process PyTorch FedAvg loop; returns (start-up s, per-round s)."""
    t0 = time.perf_counter()
    data = load_dataset(cfg.dataset)
    part = load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - mean) / std).contiguous(memory_format=fmt)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm_spec, data.num_classes, data.input_shape, cfg.bias)
    model = model.to(memory_format=fmt)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = [(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te])
               for tr, te in zip(part.train, part.test)]
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
                idx = torch.randint(len(y), (min(cfg.batch_size, len(y)),), generator=g)
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
        with torch.no_grad():
            if not cfg.evaluates(rnd + 1):
                rounds.append(time.perf_counter() - start)
                continue
            for _, _, xt, yt in clients:
                if len(yt):
                    (model(prep(xt)).argmax(1) == yt).float().mean()
            (model(prep(data.test_x)).argmax(1) == data.test_y).float().mean()
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
    args = parser.parse_args()
    cfg = ExperimentConfig(
        norm=args.norm, rounds=args.rounds, clients=args.clients, local_steps=args.local_steps,
        batch_size=args.batch_size, partition="classes-2", eval_every=args.eval_every,
        channels_last=args.channels_last,
    )
    plain_start, plain_rounds = plain_loop(cfg)
    fl_start, fl_rounds = flnorm_run(cfg)
    plain_steady = statistics.fmean(plain_rounds[1:])
    fl_steady = statistics.fmean(fl_rounds[1:])
    print(f"\nwork per round: {cfg.clients} clients x {cfg.local_steps} steps x batch {cfg.batch_size}, "
          f"paper CNN ({cfg.norm}), {cfg.dataset}, {cfg.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'':24}{'flnorm':>10}{'plain':>10}{'ratio':>8}")
    print(f"{'start-up s':24}{fl_start:10.2f}{plain_start:10.2f}{fl_start / plain_start:8.1f}")
    print(f"{'steady s/round':24}{fl_steady:10.3f}{plain_steady:10.3f}{fl_steady / plain_steady:8.2f}")
    print(f"{'round 1 s':24}{fl_rounds[0]:10.2f}{plain_rounds[0]:10.2f}")


if __name__ == "__main__":
    main()
