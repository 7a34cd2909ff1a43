"""Per-round bookkeeping on the server: metrics rows, client rows, progress log."""

from __future__ import annotations

import csv
import logging
import math
import time

from flwr.app import ArrayRecord, MetricRecord

from flnorm.config import ExperimentConfig
from flnorm.data.datasets import load_dataset
from flnorm.device import place, resolve_device
from flnorm.diagnostics import TOP_SINGULAR_VALUES
from flnorm.protocol import (
    CLIENT, CUDA_DEVICES, DOMAIN_CORRECT, DOMAIN_N, DOMAIN_PERSONAL_CORRECT, NUM_EXAMPLES, RAY_NODE,
)
from flnorm.records import torch_state
from flnorm.runner.monitor import PhaseReplies, ReplyLog
from flnorm.runner.progress import Progress
from flnorm.runner.rundir import METRICS_FILE, RunDirectory
from flnorm.task import new_model
from flnorm.training import Standardize, evaluate

log = logging.getLogger("flnorm")


class RoundFailed(RuntimeError):
    """No client of a round replied successfully."""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class RoundRecorder:
    """Writes one ``metrics.csv`` row and the ``clients.csv`` rows after every round.

    Used as the strategy's ``evaluate_fn``, which Flower calls at the end of each round
    (and once before the first, for the initial model).

    Metrics per round
    -----------------
    ``test_accuracy``/``test_loss``: mean over clients of the global model's accuracy/loss
    on each client's test split (the LN/FN paper's metric), with the BN statistics named
    in ``bn_eval``; ``personal_accuracy``: the same with each client's own BN state (its
    running statistics; FedBN: its BN modules) — under label skew a model can score high
    here without having learned the task; ``union_accuracy``/
    ``union_loss``: the global model on the whole test set, evaluated by the server with
    the statistics named in ``union_bn_eval``;
    ``train_loss``: mean over clients of their local training loss; ``clients_trained``,
    ``clients_evaluated``: how many clients those means cover; ``failures``: client
    replies that were errors or never arrived; ``seconds``: the round's wall time;
    ``elapsed``: seconds since round 1 began. Rounds that do not evaluate
    (``--eval-every``) leave the test and union columns empty; ``timestamp``: Unix time at the round's end.
    With ``diagnostics``, in the rounds that evaluate (empty in the others): ``feature_norm``
    (mean over clients of the mean penultimate feature norm after local training) and
    ``sv1..sv5`` of client ``diag_client``'s feature matrix ``Z / sqrt(n)``.
    A multi-domain dataset adds, per domain ``D`` (e.g. ``test_accuracy_mnistm``):
    ``test_accuracy_D`` and ``personal_accuracy_D``, the mean over the clients holding test
    images of ``D`` of their accuracy on those images, and ``union_accuracy_D``, the global
    model on the whole test set of ``D``; ``clients.csv`` gains each client's ``domain``
    (``mixed`` when its test images span several).
    """

    def __init__(self, cfg: ExperimentConfig, rundir: RunDirectory, replies: ReplyLog, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        self.rundir = rundir
        self.replies = replies
        self.device = resolve_device(cfg.device)
        self.model = place(new_model(cfg), self.device, cfg.channels_last)
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        self.test_x = data.test_x.to(self.device)
        self.test_y = data.test_y.to(self.device)
        self.domains = data.domains
        self.test_domain = None if data.test_domain is None else data.test_domain.to(self.device)
        self.transform = Standardize(data.mean, data.std, self.device, cfg.channels_last)
        self.started = time.perf_counter()
        self.last = self.started
        self.rows: list[dict[str, float]] = []

    @property
    def union_mode(self) -> str:
        """BN statistics of the union evaluation; the server has no client-local ones."""
        mode = self.cfg.bn_eval_mode
        return "global" if mode == "local" else mode

    def union_eval(self, arrays: ArrayRecord) -> tuple[float, float, list[float]]:
        """Accuracy and loss of the global model on the whole test set, and its accuracy per domain."""
        self.model.load_state_dict(torch_state(arrays))
        result = evaluate(self.model, self.test_x, self.test_y, self.transform,
                          bn_batch_stats=self.union_mode == "batch", groups=self.test_domain,
                          num_groups=len(self.domains))
        per_domain = [c / n if n else math.nan for c, n in zip(result.group_correct, result.group_n, strict=True)]
        return result.accuracy, result.loss, per_domain

    def _domain_columns(self, evaluated: list[dict], union: list[float]) -> dict[str, float]:
        """Per domain: mean over clients of their accuracy on its test images; the union's."""
        out: dict[str, float] = {}
        for d, name in enumerate(self.domains):
            holding = [m for m in evaluated if DOMAIN_N in m and m[DOMAIN_N][d] > 0]
            out[f"test_accuracy_{name}"] = _mean([m[DOMAIN_CORRECT][d] / m[DOMAIN_N][d] for m in holding])
            out[f"personal_accuracy_{name}"] = _mean(
                [m[DOMAIN_PERSONAL_CORRECT][d] / m[DOMAIN_N][d] for m in holding])
            out[f"union_accuracy_{name}"] = union[d] if union else math.nan
        return out

    def resume(self) -> None:
        """Continue a resumed run: ``elapsed`` goes on from the last row on disk."""
        path = self.rundir.path / METRICS_FILE
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        self.last = time.perf_counter()
        self.started = self.last - (float(rows[-1]["elapsed"]) if rows else 0.0)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0 and not self.cfg.evaluates(server_round):
            union_acc, union_loss, union_domains = math.nan, math.nan, []
        else:
            union_acc, union_loss, union_domains = self.union_eval(arrays)
        if server_round == 0:
            self.progress.note(f"round 0: initial model, union accuracy {union_acc:.4f}")
            self.started = self.last = time.perf_counter()
            return MetricRecord({"union_accuracy": union_acc, "union_loss": union_loss})
        train, test = self.replies.take()
        self._check(server_round, "train", train)
        self._check(server_round, "evaluate", test)
        now = time.perf_counter()
        # means summed in client order, not reply-arrival order: the same seed gives the same bits
        evaluated = sorted((m for m in test.metrics if m[NUM_EXAMPLES] > 0), key=lambda m: m[CLIENT])
        trained = sorted(train.metrics, key=lambda m: m[CLIENT])
        row = {
            "round": server_round,
            "test_accuracy": _mean([m["test_accuracy"] for m in evaluated]),
            "test_loss": _mean([m["test_loss"] for m in evaluated]),
            "personal_accuracy": _mean([m["personal_accuracy"] for m in evaluated]),
            "union_accuracy": union_acc,
            "union_loss": union_loss,
            **self._domain_columns(evaluated, union_domains),
            "train_loss": _mean([m["train_loss"] for m in trained]),
            **self._diagnostics(train),
            "clients_trained": len(trained),
            "clients_evaluated": len(evaluated),
            "failures": train.failures + test.failures,
            "seconds": now - self.last,
            "elapsed": now - self.started,
            "timestamp": time.time(),
        }
        self.last = now
        self.rows.append(row)
        self.rundir.append_metrics({**row, "bn_eval": self.cfg.bn_eval_mode, "union_bn_eval": self.union_mode})
        self.rundir.append_clients(self._client_rows(server_round, train, test, self.domains))
        if math.isnan(union_acc):
            self.progress.step(f"train_loss {row['train_loss']:.4f}, {row['seconds']:.2f} s (no evaluation this "
                               "round)", f"loss {row['train_loss']:.3f}")
            return MetricRecord({k: float(v) for k, v in row.items() if not math.isnan(float(v))})
        self.progress.step(
            f"test_accuracy {row['test_accuracy']:.4f} (global model, mean over {len(evaluated)} clients), "
            f"personal {row['personal_accuracy']:.4f}, union {union_acc:.4f}, train_loss {row['train_loss']:.4f}, "
            f"{row['seconds']:.2f} s",
            f"acc {row['test_accuracy']:.3f}, union {union_acc:.3f}, loss {row['train_loss']:.3f}",
        )
        return MetricRecord({k: float(v) for k, v in row.items()})

    def _diagnostics(self, train: PhaseReplies) -> dict[str, float]:
        """Mean feature norm over clients; singular values of the lowest-id client's features.

        Clients compute them in the rounds that evaluate; other rounds get NaN columns.
        """
        if not self.cfg.diagnostics:
            return {}
        out = {"feature_norm": math.nan, "diag_client": math.nan,
               **{f"sv{i}": math.nan for i in range(1, TOP_SINGULAR_VALUES + 1)}}
        reported = sorted((m for m in train.metrics if "feature_norm" in m), key=lambda m: m[CLIENT])
        if reported:
            first = reported[0]  # the lowest client id
            out["feature_norm"] = _mean([m["feature_norm"] for m in reported])
            out["diag_client"] = first[CLIENT]
            out.update({k: v for k, v in first.items() if k.startswith("sv") and k[2:].isdigit()})
        return out

    def _check(self, server_round: int, phase: str, replies: PhaseReplies) -> None:
        if replies.failures:
            log.warning(
                "round %d %s: %d of %d clients failed: %s", server_round, phase,
                replies.failures, replies.sent, "; ".join(replies.errors[:3]) or "no reply",
            )
        if replies.sent and not replies.metrics:
            raise RoundFailed(
                f"round {server_round}: every client failed in {phase}: "
                + ("; ".join(replies.errors[:3]) or "no reply before the timeout")
            )

    @staticmethod
    def _client_rows(
        server_round: int, train: PhaseReplies, test: PhaseReplies, domains: tuple[str, ...] = ()
    ) -> list[dict[str, float]]:
        by_client: dict[int, dict[str, float]] = {}
        for m in train.metrics:
            by_client.setdefault(int(m[CLIENT]), {}).update(
                train_loss=m["train_loss"], num_train=m[NUM_EXAMPLES], fit_seconds=m["fit_seconds"],
                feature_norm=m.get("feature_norm", math.nan),
                ray_node=m.get(RAY_NODE, ""), cuda_visible_devices=m.get(CUDA_DEVICES, ""),
            )
        for m in test.metrics:
            by_client.setdefault(int(m[CLIENT]), {}).update(
                test_accuracy=m["test_accuracy"] if m[NUM_EXAMPLES] else math.nan,
                test_loss=m["test_loss"] if m[NUM_EXAMPLES] else math.nan,
                personal_accuracy=m["personal_accuracy"] if m[NUM_EXAMPLES] else math.nan,
                num_test=m[NUM_EXAMPLES], eval_seconds=m.get("eval_seconds", math.nan),
            )
            if domains and DOMAIN_N in m:
                held = [name for name, n in zip(domains, m[DOMAIN_N], strict=True) if n > 0]
                by_client[int(m[CLIENT])]["domain"] = held[0] if len(held) == 1 else "mixed"
        defaults = {**dict.fromkeys(("train_loss", "num_train", "fit_seconds", "feature_norm", "test_accuracy",
                                      "test_loss", "personal_accuracy", "num_test", "eval_seconds"),
                                    math.nan),
                    "ray_node": "", "cuda_visible_devices": "", **({"domain": ""} if domains else {})}
        return [
            {"round": server_round, CLIENT: c, **{k: v.get(k, d) for k, d in defaults.items()}}
            for c, v in sorted(by_client.items())
        ]
