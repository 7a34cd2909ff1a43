"""What the benchmarks need to run this app with Flower's own processes: a clean copy of the
app, free loopback ports and a run-config string."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from flnorm import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
APP_FILES = ("flnorm", "strategies", "clients", "pyproject.toml", "README.md")  # what `flwr run` packs


def copy_app(dest: Path) -> Path:
    """Copy the Flower app (without run directories, the venv or data) into ``dest``; return it."""
    dest.mkdir(parents=True)
    for item in APP_FILES:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_config(cfg: ExperimentConfig) -> str:
    """``flwr run --run-config`` for ``cfg``: the keys whose values differ from the defaults
    (``pyproject.toml`` holds the same defaults as ``ExperimentConfig``)."""
    default = ExperimentConfig().to_flat()
    return " ".join(f"{key}={json.dumps(value) if isinstance(value, str) else str(value).lower()}"
                    for key, value in cfg.to_flat().items() if value != default[key])
