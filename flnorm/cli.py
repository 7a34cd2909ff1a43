"""``flnorm`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from flnorm.config import BN_EVAL, DEVICES, STRATEGIES, ExperimentConfig
from flnorm.data.datasets import DATASETS
from flnorm.data.partition import PARTITION_FORMS
from flnorm.errors import ConfigError
from flnorm.models.registry import MODELS
from flnorm.norms import NORM_CHOICES, POSITIONS

HELP = {
    "dataset": f"dataset: {' | '.join(DATASETS)} (mnist5k is embedded, offline)",
    "model": f"model: {' | '.join(MODELS)}",
    "norm": f"normalization: {' | '.join(NORM_CHOICES)} (BODY+fn adds FN before the head)",
    "gn_groups": "groups for gn (1 = LayerNorm, C = InstanceNorm; the LN/FN paper uses 2)",
    "norm_position": f"body norm {' | '.join(POSITIONS)} the activation (cnn, mlp)",
    "bias": "give convs and linears biases (the LN/FN paper removes them)",
    "strategy": f"strategy: {' | '.join(STRATEGIES)}",
    "partition": f"partition: {' | '.join(PARTITION_FORMS)}",
    "clients": "number of clients (virtual SuperNodes)",
    "rounds": "federated rounds",
    "local_steps": "local SGD steps (batches) per client per round",
    "batch_size": "batch size",
    "lr": "client learning rate (plain SGD)",
    "momentum": "client SGD momentum",
    "weight_decay": "client weight decay",
    "proximal_mu": "FedProx proximal weight mu (strategy fedprox)",
    "server_lr": "server learning rate eta (fedadam, fedyogi)",
    "fixbn_rounds": "fixbn: rounds before BN statistics are frozen (0 = half of --rounds)",
    "precise_passes": "precisebn: statistics passes per round (0 = one per BN layer, exact)",
    "bn_eval": f"BN statistics for the global evaluation: {' | '.join(BN_EVAL)} "
               "(auto: precise for precisebn, batch for fedbn/silobn, else global)",
    "fraction_train": "fraction of clients sampled for training each round",
    "seed": "seed for partition, model init and client batches",
    "device": f"device: {' | '.join(DEVICES)}",
    "num_cpus": "CPUs per virtual client (Ray actor); torch threads match it",
    "num_gpus": "GPUs per virtual client, fractional to share a GPU (e.g. 0.25)",
    "data_dir": "where torchvision datasets live / are downloaded",
    "download": "download torchvision datasets when missing",
    "out": "run directory (default runs/<name>-<timestamp>)",
    "node_timeout": "seconds the server waits for all clients' nodes to connect",
}


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one federated simulation", description="Run one "
                       "experiment as a Flower simulation on the Ray backend.")
    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            p.add_argument(flag, type=kind, default=default, help=f"{HELP[f.name]} (default: {default!r})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flnorm", description="Federated normalization experiments on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(parser, args)
    return 2  # pragma: no cover


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        cfg = ExperimentConfig(**values)
        from flnorm.runner.simulation import prepare, run_experiment

        cfg = prepare(cfg)
    except ConfigError as exc:
        parser.exit(2, f"flnorm run: error: {exc}\n")
    try:
        metrics = run_experiment(cfg)
    except Exception as exc:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"flnorm run: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"flnorm run: partial results (if any) are in {cfg.out}", file=sys.stderr)
        return 1
    last = metrics.iloc[-1]
    print(
        f"\nflnorm: {cfg.run_name}: round {int(last['round'])}: test_accuracy {last['test_accuracy']:.4f} "
        f"(mean over clients), union_accuracy {last['union_accuracy']:.4f}, "
        f"{metrics['seconds'].sum():.1f} s\nresults: {cfg.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
