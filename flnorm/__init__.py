"""flnorm: federated learning simulations on Flower for normalization under non-IID data.

The numerical core (norms, models, data, aggregation math, local training) imports no
Flower. The package's names are imported when first used, so ``import flnorm.<module>``
costs only that module (the deployment's SuperExec imports no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flnorm.config import ExperimentConfig

__version__ = "0.1.0"
__all__ = ["ExperimentConfig", "load_metrics", "plot_runs", "run_experiment", "run_grid"]


def __getattr__(name: str) -> Any:
    if name == "ExperimentConfig":
        from flnorm.config import ExperimentConfig

        return ExperimentConfig
    if name in ("run_experiment", "load_metrics"):
        from flnorm.runner import simulation

        return getattr(simulation, name)
    if name == "run_grid":
        from flnorm.runner.grid import run_grid

        return run_grid
    if name == "plot_runs":
        from flnorm.plots import plot_runs

        return plot_runs
    raise AttributeError(f"module 'flnorm' has no attribute {name!r}")
