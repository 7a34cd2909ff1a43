"""Figures comparing runs: accuracy, loss, per-client spread, feature diagnostics.

Reads run directories (``config.json``, ``metrics.csv``, ``clients.csv``); a grid
directory (with ``results.csv``) stands for all its cells. No Flower import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flnorm.runner.rundir import CLIENTS_FILE, CONFIG_FILE, METRICS_FILE

GRID_RESULTS = "results.csv"


@dataclass(frozen=True, eq=False)
class Run:
    """A finished (or partial) run directory, loaded."""

    path: Path
    config: dict
    metrics: pd.DataFrame
    clients: pd.DataFrame | None

    @property
    def evaluated(self) -> pd.DataFrame:
        """Metrics rows of the rounds that evaluated (all, unless ``--eval-every`` > 1)."""
        return self.metrics.dropna(subset=["test_accuracy"])


def expand(paths: list[str | Path]) -> list[Path]:
    """Run directories, with grid directories replaced by their cells."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / GRID_RESULTS).exists() and not (p / METRICS_FILE).exists():
            out += sorted(d for d in p.iterdir() if (d / METRICS_FILE).exists())
        elif (p / METRICS_FILE).exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a run directory (no {METRICS_FILE}) nor a grid")
    return out


def load_run(path: Path) -> Run:
    config = json.loads((path / CONFIG_FILE).read_text())["config"] if (path / CONFIG_FILE).exists() else {}
    clients = pd.read_csv(path / CLIENTS_FILE) if (path / CLIENTS_FILE).exists() else None
    return Run(path, config, pd.read_csv(path / METRICS_FILE), clients)


def labels(runs: list[Run]) -> list[str]:
    """Legend labels from the config values that differ between runs."""
    ignore = {"out", "data-dir"}
    keys = sorted({k for r in runs for k in r.config} - ignore)
    varying = [k for k in keys if len({str(r.config.get(k)) for r in runs}) > 1]
    if not varying:
        return [r.path.name for r in runs]
    return [", ".join(f"{k}={r.config.get(k)}" for k in varying) for r in runs]


def _figure(ncols: int, title: str):  # noqa: ANN202
    """A figure without pyplot (no global backend state), rounds on integer ticks."""
    fig = Figure(figsize=(5.5 * ncols, 4))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_runs(paths: list[str | Path], out: str | Path = "plots") -> list[Path]:
    """Write comparison PNGs for the runs in ``paths`` into ``out``; return their paths."""
    runs = [load_run(p) for p in expand(paths)]
    if not runs:
        raise FileNotFoundError("no runs to plot")
    names = labels(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, (ax_global, ax_personal, ax_union) = _figure(3, "Accuracy per round")
    for run, name in zip(runs, names):
        m = run.evaluated
        ax_global.plot(m["round"], m["test_accuracy"], label=name)
        if "personal_accuracy" in m:
            ax_personal.plot(m["round"], m["personal_accuracy"], label=name)
        ax_union.plot(m["round"], m["union_accuracy"], label=name)
    for ax, title in ((ax_global, "global model, mean over clients"),
                      (ax_personal, "personalized (client's own BN state)"),
                      (ax_union, "global model, whole test set")):
        ax.set(title=title, xlabel="round", ylabel="accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
    ax_global.legend(fontsize=7)
    written.append(_save(fig, out / "accuracy.png"))

    fig, (ax_train, ax_test) = _figure(2, "Loss per round")
    for run, name in zip(runs, names):
        ax_train.plot(run.metrics["round"], run.metrics["train_loss"], label=name)
        ax_test.plot(run.evaluated["round"], run.evaluated["test_loss"], label=name)
    for ax, title in ((ax_train, "local training loss"), (ax_test, "test loss (mean over clients)")):
        ax.set(title=title, xlabel="round", ylabel="loss")
        ax.grid(alpha=0.3)
    ax_train.legend(fontsize=7)
    written.append(_save(fig, out / "loss.png"))

    with_clients = [(r, n) for r, n in zip(runs, names) if r.clients is not None]
    if with_clients:
        fig, (ax,) = _figure(1, "Per-client accuracy of the global model (median, min-max band)")
        for run, name in with_clients:
            per_round = run.clients.dropna(subset=["test_accuracy"]).groupby("round")["test_accuracy"]
            line = ax.plot(per_round.median().index, per_round.median(), label=name)[0]
            ax.fill_between(per_round.min().index, per_round.min(), per_round.max(), alpha=0.15, color=line.get_color())
        ax.set(xlabel="round", ylabel="client accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "clients.png"))

    with_features = [(r, n) for r, n in zip(runs, names) if "feature_norm" in r.metrics]
    if with_features:
        fig, (ax_norm, ax_sv) = _figure(2, "Penultimate features after local training")
        for run, name in with_features:
            m = run.metrics.dropna(subset=["feature_norm"])  # computed in evaluated rounds only
            ax_norm.plot(m["round"], m["feature_norm"], label=name, marker=".")
            ax_sv.plot(m["round"], m["sv1"] / m[[c for c in m if c.startswith("sv")]].sum(axis=1), label=name,
                       marker=".")
        ax_norm.set(title="mean feature norm (mean over clients)", xlabel="round", yscale="log")
        ax_sv.set(title="top singular value share (one client)", xlabel="round", ylim=(0, 1))
        for ax in (ax_norm, ax_sv):
            ax.grid(alpha=0.3)
        ax_norm.legend(fontsize=7)
        written.append(_save(fig, out / "features.png"))

    domains = [c.removeprefix("test_accuracy_") for c in runs[0].metrics if c.startswith("test_accuracy_")]
    if domains and all(f"test_accuracy_{d}" in r.metrics for r in runs for d in domains):
        fig, axes = _figure(len(domains), "Accuracy per domain: global (solid), personalized (dashed)")
        for run, name in zip(runs, names):
            m = run.evaluated
            for ax, domain in zip(axes, domains, strict=True):
                line = ax.plot(m["round"], m[f"test_accuracy_{domain}"], label=name)[0]
                ax.plot(m["round"], m[f"personal_accuracy_{domain}"], ls="--", color=line.get_color())
        for ax, domain in zip(axes, domains, strict=True):
            ax.set(title=domain, xlabel="round", ylabel="accuracy", ylim=(0, 1))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        written.append(_save(fig, out / "domains.png"))
    return written


def sample_grid(dataset: str, data_dir: str = "data", per_domain: int = 12, download: bool = True) -> Figure:
    """Training images of ``dataset``: one row per domain (one row for a single-domain set)."""
    import torch

    from flnorm.data import load_dataset

    data = load_dataset(dataset, data_dir, download)
    domains = data.domains or (dataset,)
    fig = Figure(figsize=(per_domain * 0.8, len(domains) * 0.9 + 0.4))
    axes = fig.subplots(len(domains), per_domain, squeeze=False)
    for row, name in enumerate(domains):
        members = (data.train_domain == row).nonzero().flatten() if data.domains else torch.arange(len(data.train_y))
        for col, ax in enumerate(axes[row]):
            index = int(members[col * len(members) // per_domain])  # spread over the domain
            image = data.train_x[index].permute(1, 2, 0).numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(int(data.train_y[index])), fontsize=7)
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{dataset}: training images per domain (label above)")
    return fig


def plot_samples(dataset: str, out: str | Path = "plots", data_dir: str = "data") -> Path:
    """Write ``samples-<dataset>.png``: a grid of training images per domain."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return _save(sample_grid(dataset, data_dir), out / f"samples-{dataset}.png")
