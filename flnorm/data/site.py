"""A site's own data for a real deployment (``--node-config "data-path=..."``).

Format: one ``.npz`` file with four arrays,

- ``train_x``, ``test_x``: uint8 images ``[N, C, H, W]`` (or ``[N, H, W]`` for one channel),
  the same shape as the run's ``--dataset`` images;
- ``train_y``, ``test_y``: integer labels in ``[0, num_classes)``.

Inputs are standardized with the run dataset's mean and std, as in simulation.
``save_site_data`` writes the format (e.g. a partition, for testing a deployment).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

KEYS = ("train_x", "train_y", "test_x", "test_y")


def save_site_data(path: str | Path, train_x, train_y, test_x, test_y) -> None:  # noqa: ANN001
    """Write a site's data in the format ``load_site_data`` reads."""
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    np.savez(Path(path), **{k: np.asarray(v) for k, v in arrays.items()})


@lru_cache(maxsize=2)
def load_site_data(
    path: str, input_shape: tuple[int, int, int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)`` from ``path``, checked against the model's input.

    Raises
    ------
    ValueError
        Naming what is wrong with the file (missing arrays, dtype, shape, labels).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"data-path {file} is not a file (expected an .npz with {', '.join(KEYS)})")
    with np.load(file, allow_pickle=False) as npz:
        missing = [k for k in KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{file} lacks {', '.join(missing)} (it has {', '.join(npz.files)})")
        arrays = {k: npz[k] for k in KEYS}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8:
            raise ValueError(f"{file}: {split}_x must be uint8 images, got {x.dtype}")
        if x.ndim == 3:
            x = x[:, None]
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise ValueError(f"{file}: {split}_x images are {tuple(x.shape[1:])}, the run's model expects {input_shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{file}: {split}_y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{file}: {split}_y has labels outside [0, {num_classes})")
        out += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))]
    if len(out[1]) == 0:
        raise ValueError(f"{file}: no training samples")
    return tuple(out)  # type: ignore[return-value]
