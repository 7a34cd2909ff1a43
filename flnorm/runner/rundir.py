"""The run directory: resolved config, per-round and per-client CSVs, final model.

Rows are appended and flushed as rounds finish, so a crash keeps what was measured.
A reader polling a run (a test, a notebook) never sees a torn table: a CSV is created
whole by rename and then grown by one write of complete lines; the config and the model
are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from flnorm.config import ExperimentConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CLIENTS_FILE = "clients.csv"
MODEL_FILE = "model.pt"


def default_run_dir(cfg: ExperimentConfig, base: str | Path = "runs") -> Path:
    """``runs/<run name>-<UTC timestamp>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return Path(base) / f"{cfg.run_name}-{stamp}"


def versions() -> dict[str, str]:
    """Versions of what produced a run."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("flnorm", "flwr", "torch", "torchvision", "ray", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _read_header(file: Path) -> list[str]:
    with file.open(newline="") as fh:
        return next(csv.reader(fh), [])


class RunDirectory:
    """Writer for one run directory.

    Parameters
    ----------
    path
        Directory to create. It must not hold results already, unless ``resume``.
    resume
        Continue the run already in ``path`` (its config must exist).
    """

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path).resolve()
        if resume and not (self.path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{self.path} holds no run to resume (no {CONFIG_FILE})")
        if not resume and (self.path / METRICS_FILE).exists():
            raise FileExistsError(f"{self.path} already holds a run; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self._headers: dict[str, list[str]] = {}

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG_FILE).read_text())

    def truncate(self, last_round: int) -> None:
        """Drop CSV rows after ``last_round`` (written before a crash, past the checkpoint)."""
        for name in (METRICS_FILE, CLIENTS_FILE):
            file = self.path / name
            if not file.exists():
                continue
            with file.open(newline="") as fh:
                reader = csv.DictReader(fh)
                header, rows = list(reader.fieldnames or []), [r for r in reader if int(r["round"]) <= last_round]
            self._headers[name] = header
            self._write_rows(file, header, rows)

    def write_config(self, cfg: ExperimentConfig, **resolved: Any) -> None:
        """Write the config with its resolved values (device, norm, versions ...)."""
        body = {"config": cfg.to_flat(), "resolved": resolved, "versions": versions()}
        self._atomic_write(CONFIG_FILE, json.dumps(body, indent=2, default=str).encode())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        self._append(METRICS_FILE, [row])

    def append_clients(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._append(CLIENTS_FILE, rows)

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        tmp = self.path / (MODEL_FILE + ".tmp")
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, self.path / MODEL_FILE)

    def _append(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        file = self.path / name
        header = self._headers.get(name) or (_read_header(file) if file.exists() else list(rows[0]))
        added = [key for key in rows[0] if key not in header]
        if added:  # a resumed run whose file was written by a version with fewer columns
            header = header + added
            if file.exists():
                with file.open(newline="") as fh:
                    old_rows = list(csv.DictReader(fh))
                self._write_rows(file, header, old_rows)  # old rows get empty new columns
        self._headers[name] = header
        if not file.exists():  # created whole, by replace: a reader never sees it empty
            self._write_rows(file, header, list(rows))
            return
        text = io.StringIO(newline="")
        csv.DictWriter(text, fieldnames=header, extrasaction="raise").writerows(rows)
        with file.open("a", newline="") as fh:  # one write of whole lines: a reader sees none or all
            fh.write(text.getvalue())

    @staticmethod
    def _write_rows(file: Path, header: list[str], rows: list[dict[str, str]]) -> None:
        """Replace ``file`` with ``header`` and ``rows``, atomically."""
        tmp = file.with_name(file.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, file)

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path / name)
