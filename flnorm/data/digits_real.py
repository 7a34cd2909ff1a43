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

from flnorm.data.digits import stack_domains, to_rgb32

DOMAINS: tuple[str, ...] = ("mnist", "usps", "svhn")
SUBSET_SEED = 20240102


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
    cut: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}
    for train in (True, False):
        size = min(len(splits[name, train][1]) for name in DOMAINS)
        for name in DOMAINS:
            x, y = splits[name, train]
            pick = np.sort(rng.permutation(len(y))[:size])
            cut[name, train] = to_rgb32(np.asarray(x)[pick]), np.asarray(y)[pick]
    return stack_domains([{"train": cut[name, True], "test": cut[name, False]} for name in DOMAINS])
