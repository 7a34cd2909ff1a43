"""Run an experiment as a Flower simulation on the Ray backend, in this process."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flnorm.config import ExperimentConfig
from flnorm.data.federated import load_partition
from flnorm.errors import ConfigError
from flnorm.precision import native_on_cpu
from flnorm.runner.checkpoint import resume_point
from flnorm.runner.engine import engine_changes
from flnorm.runner.progress import flower_log
from flnorm.runner.ray_start import export_module_path, start_up_changes
from flnorm.runner.rundir import METRICS_FILE, default_run_dir
from flnorm.runner.stopping import Stopped, deferred, reclaim_signals, stop_on_signals, stopping_active
from flnorm.task import new_model

if TYPE_CHECKING:  # pandas and Flower load beside ``ray.init`` (``run_prepared``), not before it
    import pandas as pd
    from flwr.clientapp import ClientApp

log = logging.getLogger("flnorm")
SERVER_STOP_WAIT = 30.0  # seconds the ServerApp gets to finish its step after a stop signal


def backend_config(cfg: ExperimentConfig) -> dict:
    """Flower's Ray backend settings: resources per virtual client."""
    init_args: dict = {"logging_level": "ERROR", "log_to_driver": True}
    if cfg.ray_cpus:
        init_args["num_cpus"] = cfg.ray_cpus
    return {
        "client_resources": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        "init_args": init_args,
    }


def cluster_address(cfg: ExperimentConfig) -> str:
    """The Ray cluster the clients run on: ``ray-address``, else ``RAY_ADDRESS``; "" for a Ray started here."""
    return cfg.ray_address or os.environ.get("RAY_ADDRESS", "")


def check_cluster(cfg: ExperimentConfig, nodes: list[dict[str, Any]]) -> None:
    """``ConfigError`` unless some live node of the cluster can hold one client's resources.

    ``nodes`` is ``ray.nodes()``. The driver machine's own devices do not matter: a
    CPU-only head node may drive clients on GPU workers.
    """
    live = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(r.get("CPU", 0) >= cfg.num_cpus and r.get("GPU", 0) >= cfg.num_gpus for r in live):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in live) or "no live node"
    raise ConfigError(f"no node of the Ray cluster at {cluster_address(cfg)} can hold a client with "
                      f"num-cpus={cfg.num_cpus} and num-gpus={cfg.num_gpus:g} (nodes: {have})")


def start_ray(cfg: ExperimentConfig) -> bool:
    """Start (or join) the Ray instance for Flower's backend; False if Ray is already up.

    Ray starts here with ``flnorm.runner.ray_start``'s changes; its workers inherit this
    process's module path through ``PYTHONPATH`` (Flower's own backend passes it in a
    ``runtime_env``, at about a second of start-up). With a cluster address this process joins
    the cluster as its driver (the cluster's nodes need flnorm installed) after checking
    that a client fits on one of its nodes. Flower shuts Ray down (or disconnects) at the
    end of the run.
    """
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(cfg)
    init_args = backend_config(cfg)["init_args"]
    if address:
        init_args = {k: v for k, v in init_args.items() if k != "num_cpus"} | {"address": address}
    else:
        export_module_path()
        init_args = init_args | {"include_dashboard": False}
    with warnings.catch_warnings(), _ray_keeps_sigterm_handler(), start_up_changes(local=not address):
        # Ray's notice that it may stop hiding GPUs from tasks that ask for none; flnorm
        # relies on the hiding (a client with num-gpus=0 trains on the CPU).
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        ray.init(**init_args)
    reclaim_signals()  # Ray's core worker has installed a C++ SIGTERM handler
    if address:
        try:
            check_cluster(cfg, ray.nodes())
        except ConfigError:
            ray.shutdown()
            raise
    return True


@contextmanager
def _ray_keeps_sigterm_handler() -> Iterator[None]:
    """Inside ``stop_on_signals``, keep ``ray.init`` from installing its driver's Python SIGTERM
    handler (``sys.exit(15)`` at any point of start-up)."""
    from ray._private import utils

    original = utils.set_sigterm_handler
    if stopping_active():
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


def prepare(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check everything that can be checked before Ray starts; fix the run directory.

    Raises ``ConfigError`` naming what is wrong, with nothing written: resources this
    machine cannot give, a norm the model cannot take (e.g. GroupNorm groups that do not
    divide its channels), an unloadable dataset or impossible partition, an ``out`` that
    is not writable or already holds a run, and a resume that cannot continue.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but no CUDA device is visible (use auto or cpu)")
    if cluster_address(cfg):  # its resources are checked when this process joins it
        if cfg.ray_cpus:
            raise ConfigError(f"ray-cpus={cfg.ray_cpus} sizes a Ray started here; the cluster at "
                              f"{cluster_address(cfg)} has its own resources")
    else:
        if cfg.num_gpus > 0 and not torch.cuda.is_available():
            raise ConfigError(f"num-gpus={cfg.num_gpus} per client, but no CUDA device is visible "
                              "(GPUs on other machines: give the Ray cluster's address, --ray-address)")
        cpus = cfg.ray_cpus or os.cpu_count() or 1
        if cfg.num_cpus > cpus:
            raise ConfigError(f"num-cpus={cfg.num_cpus} per client, but Ray has {cpus} CPUs here "
                              f"(ray-cpus={cfg.ray_cpus}): no client could ever be placed")
    if cfg.precision != "fp32" and not cluster_address(cfg) and not torch.cuda.is_available() \
            and not native_on_cpu(cfg.precision):
        log.warning("precision %s: this CPU has no native support for it (oneDNN); it runs emulated, "
                    "several times slower than fp32 (bf16 took 8x the time of fp32 on the test machine)",
                    cfg.precision)
    try:
        new_model(cfg)
    except ValueError as exc:
        raise ConfigError(f"model {cfg.model} cannot take norm {cfg.norm_spec.name}: {exc}") from None
    load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    _check_writable(out)
    if cfg.resume:
        resume_point(out, cfg)
    elif (out / METRICS_FILE).exists():
        raise ConfigError(f"{out} already holds a run; choose another --out (or resume it)")
    return cfg.replace(out=str(out.resolve()), data_dir=str(Path(cfg.data_dir).expanduser().resolve()))


def _check_writable(out: Path) -> None:
    """``out`` can be created and written: a probe directory is made in its nearest existing
    ancestor and removed again (permission bits alone mislead root and special filesystems)."""
    existing = out.resolve()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        os.rmdir(tempfile.mkdtemp(prefix=".flnorm-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"cannot write the run directory {out}: {exc}") from None


def run_experiment(cfg: ExperimentConfig | None = None, **changes: object) -> pd.DataFrame:
    """Run one experiment and return its per-round metrics.

    Parameters
    ----------
    cfg
        The experiment (defaults to ``ExperimentConfig()``).
    **changes
        Field overrides, e.g. ``run_experiment(norm="ln", rounds=5)``.

    Returns
    -------
    pandas.DataFrame
        ``metrics.csv`` of the run; ``df.attrs["run_dir"]`` is the run directory.
    """
    return run_prepared(prepare((cfg or ExperimentConfig()).replace(**changes)))


def run_prepared(cfg: ExperimentConfig, client_app: ClientApp | None = None) -> pd.DataFrame:
    """Run a config returned by ``prepare``; ``client_app`` replaces flnorm's (fault tests).

    Flower's simulation modules (about 2 s of imports here) load in a thread while
    ``ray.init`` waits for Ray's processes to come up.

    SIGINT and SIGTERM raise ``stopping.Stopped`` (see ``stop_on_signals``): the engine and
    Ray are stopped, the ServerApp ends at its next wait, and the run directory holds the
    last complete round's checkpoint, ready for ``resume``.
    """
    with stop_on_signals():
        return _run_prepared(cfg, client_app)


def _run_prepared(cfg: ExperimentConfig, client_app: ClientApp | None) -> pd.DataFrame:
    started = False
    server_running, server_ended = threading.Event(), threading.Event()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flnorm-import") as pool, deferred():
            flower_side = pool.submit(_import_flower_side)
            started = start_ray(cfg)
            run_simulation, flnorm_client_app, make_server_app = flower_side.result()
        with warnings.catch_warnings(), flower_log(cfg.verbose), engine_changes():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                run_simulation(
                    server_app=make_server_app(cfg, server_running, server_ended),
                    client_app=client_app or flnorm_client_app,
                    num_supernodes=cfg.clients,
                    backend_config=backend_config(cfg),
                )
            except Stopped:
                # Flower has stopped the engine; the ServerApp ends at its next wait for
                # replies, after finishing what it was doing (a checkpoint write included).
                # It waits here, inside the engine changes: restored any earlier, a ServerApp
                # between two waits (evaluating, checkpointing) would enter Flower's own
                # reply wait next, which never sees the stop, and keep the process alive.
                if server_running.is_set():
                    server_ended.wait(SERVER_STOP_WAIT)
                raise
    finally:
        if started:  # (a stop inside ``import ray`` leaves the module half imported)
            from flnorm.runner import ray_backend

            if not ray_backend.keeping_ray():
                import ray

                ray.shutdown()  # Flower's backend normally has; a no-op then
    return load_metrics(cfg.out)


def _import_flower_side() -> tuple[Callable[..., Any], ClientApp, Callable[[ExperimentConfig], Any]]:
    """Import what ``run_prepared`` needs from Flower (and the modules of flnorm's engine changes)."""
    import pandas  # noqa: F401 - for ``load_metrics``, off the main thread
    from flwr.simulation import run_simulation

    from clients.client_app import app as flnorm_client_app
    from flnorm.runner import dispatch, ray_backend  # noqa: F401 - imported here, off the main thread
    from flnorm.runner.server_app import make_server_app

    return run_simulation, flnorm_client_app, make_server_app


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.csv`` of a run directory as a DataFrame (``attrs["run_dir"]`` set)."""
    import pandas as pd

    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise RuntimeError(f"the run wrote no metrics ({path} is missing): it failed before round 1")
    df = pd.read_csv(path)
    df.attrs["run_dir"] = str(Path(run_dir))
    return df
