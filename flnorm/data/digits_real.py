"""``digits-real``: the members of Digits-5 that torchvision provides, one domain each.

``mnist`` (28x28 grey, padded by 2 pixels), ``usps`` (16x16 grey, upsampled bilinearly) and
``svhn`` (32x32 colour house numbers; torchvision maps its label 10 to 0), all 3x32x32 uint8
with grey domains replicated over the channels. As in FedBN's Digits-5 protocol every domain
is cut to the same size, the smallest domain's (USPS: 7,291 train / 2,007 test images): a
seeded random subset of the larger ones. Downloaded by torchvision into ``data_dir`` when
``download`` is true and the files are missing (SVHN's ``.mat`` files need SciPy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DOMAINS: tuple[str, ...] = ("mnist", "usps", "svhn")
SUBSET_SEED = 20240102


def _rgb32(images: np.ndarray) -> np.ndarray:
    """[N, H, W] grey (28x28 padded, 16x16 upsampled) or [N, 3, 32, 32] -> [N, 3, 32, 32] uint8."""
    import torch
    import torch.nn.functional as F

    if images.ndim == 4:
        return images
    if images.shape[1:] == (28, 28):
        grey = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    else:
        big = F.interpolate(torch.from_numpy(images.astype(np.float32))[:, None], size=(32, 32), mode="bilinear",
                            align_corners=False)
        grey = big[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return np.repeat(grey[:, None], 3, axis=1)


def _split(name: str, data_dir: Path, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    root = str(data_dir)
    if name == "mnist":
        ds = tvd.MNIST(root, train=train, download=download)
        return ds.data.numpy(), ds.targets.numpy()
    if name == "usps":
        ds = tvd.USPS(root, train=train, download=download)
        return np.asarray(ds.data), np.asarray(ds.targets)
    ds = tvd.SVHN(root, split="train" if train else "test", download=download)
    return np.asarray(ds.data), np.asarray(ds.labels)


def load_digits_real(data_dir: Path, download: bool) -> dict[str, np.ndarray]:
    """Every domain, cut to the smallest domain's size: ``{train,test}_{x,y,domain}``."""
    splits = {(name, train): _split(name, data_dir, download, train) for name in DOMAINS for train in (True, False)}
    rng = np.random.default_rng(SUBSET_SEED)
    out: dict[str, list[np.ndarray]] = {}
    for train, prefix in ((True, "train"), (False, "test")):
        size = min(len(splits[name, train][1]) for name in DOMAINS)
        for d, name in enumerate(DOMAINS):
            x, y = splits[name, train]
            pick = np.sort(rng.permutation(len(y))[:size])
            out.setdefault(f"{prefix}_x", []).append(_rgb32(np.asarray(x)[pick]))
            out.setdefault(f"{prefix}_y", []).append(np.asarray(y, dtype=np.int64)[pick])
            out.setdefault(f"{prefix}_domain", []).append(np.full(size, d, dtype=np.int64))
    return {k: np.concatenate(v) for k, v in out.items()}
