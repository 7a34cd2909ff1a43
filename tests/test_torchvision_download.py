"""End-to-end tests of the torchvision download path behind ``load_dataset``.

No internet is needed. Each test writes small files in the real on-disk formats:

* MNIST / FashionMNIST: gzip'd IDX files (magic numbers 2049 for labels and 2051 for images,
  big-endian sizes, then raw uint8 data);
* CIFAR-10 / CIFAR-100: a ``.tar.gz`` holding the pickled batches (``data_batch_1..5``,
  ``test_batch`` and ``batches.meta``; or ``train``, ``test`` and ``meta``). Each image is
  one 3072-byte row: 1024 red, then 1024 green, then 1024 blue values, row-major.

The files are served by ``http.server`` on 127.0.0.1 (an ephemeral port, in a thread).
``monkeypatch`` points torchvision's class attributes (``mirrors``/``resources`` for MNIST,
``url``/``tgz_md5``/``train_list``/``test_list``/``meta`` for CIFAR) at that server, with
the real md5 sums of the files written here. The rest of torchvision is unpatched: the
redirect probe, the ``urllib`` download, md5 checks, gunzip/untar and the parsers. Then
flnorm's ``load_dataset`` must return exactly the pixels and labels that were written.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import socket
import struct
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from torchvision.datasets.utils import USER_AGENT

from flnorm.data.datasets import DATASETS, load_dataset

TORCHVISION_NAMES = ["mnist", "fmnist", "cifar10", "cifar100"]
CLASS_OF = {"mnist": "MNIST", "fmnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}

MNIST_TRAIN, MNIST_TEST = 20, 10
CIFAR10_PER_BATCH, CIFAR10_TEST = 2, 4  # 5 train batches -> 10 train images
CIFAR100_TRAIN, CIFAR100_TEST = 12, 6


# ---------------------------------------------------------------------------- helpers


@dataclass
class Expected:
    """What ``load_dataset`` should return for the files a test published."""

    train_x: np.ndarray  # [N, C, H, W] uint8
    train_y: np.ndarray  # [N] int64
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    known_image: np.ndarray  # train_x[0], written as a fixed, asymmetric pattern
    requested_paths: set[str]  # URL paths torchvision must GET from the server


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pattern(h: int, w: int) -> np.ndarray:
    """An [H, W] uint8 image in which transposing or flipping changes the pixels."""
    rows, cols = np.indices((h, w))
    return ((rows * w + cols) % 256).astype(np.uint8)


def _train_and_test_pixels(rng: np.random.Generator, shape_train, shape_test):
    """Train pixels uniform in [0, 255], test pixels in [200, 255].

    The two splits have clearly different statistics, so a mean/std computed from the
    test images, or from train and test together, would be detected.
    """
    train = rng.integers(0, 256, size=shape_train, dtype=np.uint8)
    test = rng.integers(200, 256, size=shape_test, dtype=np.uint8)
    return train, test


def _closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ MNIST (IDX files)


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def _publish_mnist(name: str, www: Path, base_url: str, monkeypatch, seed: int) -> Expected:
    """Write the four gzip'd IDX files under ``www/<name>/`` and aim torchvision at them."""
    rng = np.random.default_rng(seed)
    train_x, test_x = _train_and_test_pixels(rng, (MNIST_TRAIN, 28, 28), (MNIST_TEST, 28, 28))
    train_x[0] = _pattern(28, 28)
    train_y = np.arange(MNIST_TRAIN) % 10
    test_y = (np.arange(MNIST_TEST) * 3 + 1) % 10

    folder = www / name
    folder.mkdir(parents=True)
    payloads = {
        "train-images-idx3-ubyte.gz": _idx_images(train_x),
        "train-labels-idx1-ubyte.gz": _idx_labels(train_y),
        "t10k-images-idx3-ubyte.gz": _idx_images(test_x),
        "t10k-labels-idx1-ubyte.gz": _idx_labels(test_y),
    }
    resources = []
    for filename, raw in payloads.items():
        (folder / filename).write_bytes(gzip.compress(raw, mtime=0))
        resources.append((filename, _md5(folder / filename)))

    cls = getattr(tvd, CLASS_OF[name])
    monkeypatch.setattr(cls, "mirrors", [f"{base_url}/{name}/"])
    monkeypatch.setattr(cls, "resources", resources)
    return Expected(
        train_x=train_x[:, None],
        train_y=train_y.astype(np.int64),
        test_x=test_x[:, None],
        test_y=test_y.astype(np.int64),
        num_classes=10,
        known_image=_pattern(28, 28)[None],
        requested_paths={f"/{name}/{filename}" for filename in payloads},
    )


# -------------------------------------------------------------- CIFAR (pickles in tgz)


def _cifar_known_image() -> np.ndarray:
    """A [3, 32, 32] image with a distinct pattern per channel (catches RGB/HWC mix-ups)."""
    red = _pattern(32, 32)
    return np.stack([red, 255 - red, np.full((32, 32), 7, np.uint8)])


def _cifar_pixels(rng: np.random.Generator, n_train: int, n_test: int):
    train_x, test_x = _train_and_test_pixels(rng, (n_train, 3, 32, 32), (n_test, 3, 32, 32))
    train_x[0] = _cifar_known_image()
    return train_x, test_x


def _rows(images: np.ndarray) -> np.ndarray:
    """[N, 3, 32, 32] -> the genuine [N, 3072] uint8 rows (R plane, G plane, B plane)."""
    rows = images.reshape(len(images), 3072)
    assert rows.dtype == np.uint8 and rows.shape[1] == 3072
    return rows


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are Python-2 era pickles


def _make_tgz(src_dir: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_dir, arcname=src_dir.name)


def _publish_cifar_archive(
    name: str, cls, folder: Path, www: Path, base_url: str, monkeypatch, train_files, test_files, meta_file
) -> set[str]:
    """Tar ``folder``, publish it behind a redirect, and patch ``cls`` with the real md5s."""
    (www / "files").mkdir(parents=True, exist_ok=True)
    archive = www / "files" / cls.filename
    _make_tgz(folder, archive)
    md5s = {p.name: _md5(p) for p in folder.iterdir()}

    # The URL answers with a 302, so torchvision's _get_redirect_url has real work to do.
    monkeypatch.setattr(cls, "url", f"{base_url}/redirect/{cls.filename}")
    monkeypatch.setattr(cls, "tgz_md5", _md5(archive))
    monkeypatch.setattr(cls, "train_list", [[f, md5s[f]] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[f, md5s[f]] for f in test_files])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[meta_file]})
    return {f"/redirect/{cls.filename}", f"/files/{cls.filename}"}


def _publish_cifar10(name: str, www: Path, base_url: str, monkeypatch, seed: int) -> Expected:
    """Write ``cifar-10-python.tar.gz`` (5 train batches, test batch, meta, readme)."""
    rng = np.random.default_rng(seed)
    n_train = 5 * CIFAR10_PER_BATCH
    train_x, test_x = _cifar_pixels(rng, n_train, CIFAR10_TEST)
    train_y = (np.arange(n_train) * 7 + 3) % 10
    test_y = np.arange(CIFAR10_TEST) % 10

    folder = www / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        sl = slice(b * CIFAR10_PER_BATCH, (b + 1) * CIFAR10_PER_BATCH)
        _write_pickle(
            folder / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": [int(y) for y in train_y[sl]],
                "data": _rows(train_x[sl]),
                "filenames": [f"img_{b}_{i}.png" for i in range(CIFAR10_PER_BATCH)],
            },
        )
    _write_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(y) for y in test_y],
            "data": _rows(test_x),
            "filenames": [f"test_{i}.png" for i in range(CIFAR10_TEST)],
        },
    )
    label_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": CIFAR10_PER_BATCH, "label_names": label_names, "num_vis": 3072},
    )
    (folder / "readme.html").write_text("<html>test archive</html>")

    paths = _publish_cifar_archive(
        name, tvd.CIFAR10, folder, www, base_url, monkeypatch,
        [f"data_batch_{b}" for b in range(1, 6)], ["test_batch"], "batches.meta",
    )
    return Expected(
        train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), 10,
        _cifar_known_image(), paths,
    )


def _publish_cifar100(name: str, www: Path, base_url: str, monkeypatch, seed: int) -> Expected:
    """Write ``cifar-100-python.tar.gz`` (train, test, meta with fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    train_x, test_x = _cifar_pixels(rng, CIFAR100_TRAIN, CIFAR100_TEST)
    train_y = np.array([0, 99, 42, 17, 63, 5, 88, 31, 99, 0, 50, 76])
    test_y = np.array([99, 1, 64, 23, 0, 58])
    assert len(train_y) == CIFAR100_TRAIN and len(test_y) == CIFAR100_TEST

    folder = www / "build" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        _write_pickle(
            folder / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(len(y))],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": [int(v) for v in y],
                "coarse_labels": [int(v) // 5 for v in y],  # a different list: must not be used
                "data": _rows(x),
            },
        )
    _write_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )

    paths = _publish_cifar_archive(
        name, tvd.CIFAR100, folder, www, base_url, monkeypatch, ["train"], ["test"], "meta"
    )
    return Expected(
        train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), 100,
        _cifar_known_image(), paths,
    )


PUBLISHERS = {
    "mnist": _publish_mnist,
    "fmnist": _publish_mnist,
    "cifar10": _publish_cifar10,
    "cifar100": _publish_cifar100,
}
SEEDS = {"mnist": 1, "fmnist": 2, "cifar10": 3, "cifar100": 4}


def _point_at(name: str, base_url: str, monkeypatch) -> None:
    """Aim ``name``'s torchvision class at ``base_url`` (md5 lists are left as they are)."""
    cls = getattr(tvd, CLASS_OF[name])
    if name in ("mnist", "fmnist"):
        monkeypatch.setattr(cls, "mirrors", [f"{base_url}/{name}/"])
    else:
        monkeypatch.setattr(cls, "url", f"{base_url}/redirect/{cls.filename}")


# -------------------------------------------------------------------------- fixtures


class FileServer:
    """A threaded ``http.server`` on 127.0.0.1 serving ``root``; records each request.

    ``/redirect/<path>`` answers 302 to ``/files/<path>``; other paths are static files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []  # (path, User-Agent)
        lock = threading.Lock()
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                with lock:
                    log.append((self.path, self.headers.get("User-Agent", "")))
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/files/" + self.path[len("/redirect/"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps shutdown() fast (the default waits up to 0.5 s).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        """Stop serving and release the port (safe to call twice)."""
        if not self._closed:
            self._closed = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _fresh_cache_and_no_proxy(monkeypatch):
    """Empty ``load_dataset``'s lru_cache around each test; never send 127.0.0.1 via a proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


@pytest.fixture
def server(tmp_path):
    """A local file server over ``tmp_path/www``, shut down by the finalizer."""
    www = tmp_path / "www"
    www.mkdir()
    srv = FileServer(www)
    yield srv
    srv.close()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """The (initially empty) ``data_dir`` given to ``load_dataset``."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def published(request, server, monkeypatch) -> Expected:
    """Write dataset ``request.param``'s files, serve them, and patch torchvision to match."""
    name = request.param
    return PUBLISHERS[name](name, server.root, server.base_url, monkeypatch, SEEDS[name])


def _assert_matches(ds, name: str, exp: Expected) -> None:
    assert ds.name == name
    assert ds.train_x.dtype == torch.uint8 and ds.test_x.dtype == torch.uint8
    assert ds.train_y.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    assert tuple(ds.train_x.shape) == exp.train_x.shape
    assert tuple(ds.test_x.shape) == exp.test_x.shape
    assert ds.input_shape == exp.train_x.shape[1:]
    assert ds.num_classes == exp.num_classes
    assert torch.equal(ds.train_x[0], torch.from_numpy(exp.known_image))
    assert torch.equal(ds.train_x, torch.from_numpy(exp.train_x))
    assert torch.equal(ds.test_x, torch.from_numpy(exp.test_x))
    assert torch.equal(ds.train_y, torch.from_numpy(exp.train_y))
    assert torch.equal(ds.test_y, torch.from_numpy(exp.test_y))
    assert int(ds.train_y.max()) < ds.num_classes and int(ds.test_y.max()) < ds.num_classes


# ----------------------------------------------------------------------------- tests


def test_torchvision_names_are_registered():
    """Every dataset tested here is one ``load_dataset`` knows about."""
    assert set(TORCHVISION_NAMES) <= set(DATASETS)


@pytest.mark.parametrize("published", TORCHVISION_NAMES, indirect=True)
def test_download_extract_and_load_round_trip(published, server, data_dir, request):
    """download=True fetches over HTTP, verifies md5s, extracts, and loads the exact data.

    Checks pixels (including a known asymmetric image, so H/W or channel mix-ups fail),
    labels (CIFAR-100 must use ``fine_labels``), dtypes, shapes, ``num_classes``, that
    mean/std come from the training images only, and that the server saw the requests.
    """
    name = request.node.callspec.params["published"]
    exp = published

    ds = load_dataset(name, str(data_dir), download=True)

    _assert_matches(ds, name, exp)

    # Per-channel statistics of the training images in [0, 1].
    scaled = exp.train_x.astype(np.float64) / 255.0
    want_mean = scaled.mean(axis=(0, 2, 3))
    want_std = scaled.std(axis=(0, 2, 3))
    assert len(ds.mean) == len(ds.std) == exp.train_x.shape[1]
    assert ds.mean == pytest.approx(tuple(want_mean), abs=1e-12)
    # Sample vs population std differ by a factor sqrt(n/(n-1)) ~ 1 + 5e-5 here.
    assert ds.std == pytest.approx(tuple(want_std), rel=1e-3)
    # ... and not from the (much brighter) test images, nor from both splits together.
    both = np.concatenate([exp.train_x, exp.test_x]).astype(np.float64) / 255.0
    assert np.all(np.abs(np.array(ds.mean) - both.mean(axis=(0, 2, 3))) > 0.02)

    # The bytes really came over HTTP from our server, via torchvision's own client.
    assert exp.requested_paths <= set(server.paths)
    assert {ua for _, ua in server.requests} == {USER_AGENT}

    # Archives were downloaded into data_dir and extracted there.
    if name in ("mnist", "fmnist"):
        raw = data_dir / CLASS_OF[name] / "raw"
        assert (raw / "train-images-idx3-ubyte.gz").is_file()
        assert (raw / "t10k-labels-idx1-ubyte").is_file()
    else:
        cls = getattr(tvd, CLASS_OF[name])
        assert (data_dir / cls.filename).is_file()
        assert (data_dir / cls.base_folder / cls.meta["filename"]).is_file()


@pytest.mark.parametrize("published", TORCHVISION_NAMES, indirect=True)
def test_second_download_is_skipped_when_files_verify(published, server, data_dir, request):
    """With the files already on disk (and md5s matching), download=True makes no requests."""
    name = request.node.callspec.params["published"]
    load_dataset(name, str(data_dir), download=True)
    n_requests = len(server.requests)
    load_dataset.cache_clear()

    ds = load_dataset(name, str(data_dir), download=True)

    assert len(server.requests) == n_requests
    _assert_matches(ds, name, published)


@pytest.mark.parametrize("published", TORCHVISION_NAMES, indirect=True)
def test_reload_from_disk_with_download_false(published, server, data_dir, request, monkeypatch):
    """After one download, download=False loads the same data from disk with no server."""
    name = request.node.callspec.params["published"]
    first = load_dataset(name, str(data_dir), download=True)
    server.close()
    _point_at(name, f"http://127.0.0.1:{_closed_port()}", monkeypatch)
    load_dataset.cache_clear()

    again = load_dataset(name, str(data_dir), download=False)

    assert again is not first  # really reloaded, not served from the lru_cache
    _assert_matches(again, name, published)
    assert again.mean == first.mean and again.std == first.std


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_download_false_without_files_names_dataset(name, data_dir):
    """download=False on an empty data_dir fails with flnorm's RuntimeError."""
    with pytest.raises(RuntimeError) as info:
        load_dataset(name, str(data_dir), download=False)
    message = str(info.value)
    assert f"could not load {name} " in message
    assert "mnist5k" in message


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_unreachable_server_raises_helpful_error(name, data_dir, monkeypatch):
    """download=True against a closed port is a RuntimeError naming the dataset and mnist5k."""
    _point_at(name, f"http://127.0.0.1:{_closed_port()}", monkeypatch)

    with pytest.raises(RuntimeError) as info:
        load_dataset(name, str(data_dir), download=True)

    message = str(info.value)
    assert f"could not load {name} " in message
    assert "download=True" in message
    assert "mnist5k" in message
    assert info.value.__cause__ is not None  # the torchvision / urllib error is chained
    assert "refused" in message.lower() or "Errno" in message


@pytest.mark.parametrize("published", TORCHVISION_NAMES, indirect=True)
def test_md5_mismatch_is_detected(published, server, data_dir, request, monkeypatch):
    """torchvision's md5 check runs for real: a wrong checksum makes the load fail."""
    name = request.node.callspec.params["published"]
    cls = getattr(tvd, CLASS_OF[name])
    if name in ("mnist", "fmnist"):
        bad = [(f, "0" * 32) if i == 0 else (f, m) for i, (f, m) in enumerate(cls.resources)]
        monkeypatch.setattr(cls, "resources", bad)
    else:
        monkeypatch.setattr(cls, "tgz_md5", "0" * 32)

    with pytest.raises(RuntimeError) as info:
        load_dataset(name, str(data_dir), download=True)

    message = str(info.value)
    assert f"could not load {name} " in message and "mnist5k" in message
    assert "corrupted" in message
    assert server.requests  # the file was fetched, then rejected


# ------------------------------------------------- digits-real: MNIST, USPS (bz2 libsvm), SVHN (.mat)

USPS_SVHN_TRAIN, USPS_SVHN_TEST = MNIST_TRAIN, MNIST_TEST  # equal sizes: no domain is cut


def _usps_lines(values: np.ndarray, labels: np.ndarray) -> bytes:
    """The libsvm text USPS ships: ``label idx:value ...`` with labels 1..10, values in [-1, 1]."""
    lines = [f"{int(y) + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(img.ravel()))
             for img, y in zip(values, labels)]
    return ("\n".join(lines) + "\n").encode()


def _publish_usps(www: Path, base_url: str, monkeypatch) -> dict[str, np.ndarray]:
    """usps.bz2 / usps.t.bz2: every image one grey level (constant), but image 0 of the train
    file dark on its left half and bright on its right; returns the decoded uint8 levels."""
    import bz2

    levels = {}
    split_list = {}
    for split, n in (("train", USPS_SVHN_TRAIN), ("test", USPS_SVHN_TEST)):
        grey = ((np.arange(n) % 17) / 8 - 1)[:, None, None] * np.ones((n, 16, 16))  # exact in binary and text
        if split == "train":
            grey[0, :, :8], grey[0, :, 8:] = -1.0, 1.0
        labels = (np.arange(n) * 3) % 10
        filename = "usps.bz2" if split == "train" else "usps.t.bz2"
        (www / filename).write_bytes(bz2.compress(_usps_lines(grey, labels)))
        split_list[split] = [f"{base_url}/{filename}", filename, _md5(www / filename)]
        decoded = ((grey.astype(np.float32) + 1) / 2 * 255).astype(np.uint8)  # torchvision's own rule
        levels[split] = (decoded, labels)
    monkeypatch.setattr(tvd.USPS, "split_list", split_list)
    return levels


def _publish_svhn(www: Path, base_url: str, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train_32x32.mat / test_32x32.mat: X as [32, 32, 3, N] uint8, y as [N, 1] with 10 for zero."""
    from scipy.io import savemat

    rng = np.random.default_rng(7)
    out, split_list = {}, {}
    for split, n in (("train", USPS_SVHN_TRAIN), ("test", USPS_SVHN_TEST)):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)  # [N, C, H, W]
        images[0] = _cifar_known_image()
        digits = (np.arange(n) * 7) % 10
        filename = f"{split}_32x32.mat"
        savemat(www / filename, {"X": images.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
        split_list[split] = [f"{base_url}/{filename}", filename, _md5(www / filename)]
        out[split] = (images, digits)
    monkeypatch.setattr(tvd.SVHN, "split_list", {**tvd.SVHN.split_list, **split_list})
    return out


def test_digits_real_downloads_mnist_usps_and_svhn_as_three_domains(server, data_dir, monkeypatch):
    mnist = _publish_mnist("mnist", server.root, server.base_url, monkeypatch, SEEDS["mnist"])
    usps = _publish_usps(server.root, server.base_url, monkeypatch)
    svhn = _publish_svhn(server.root, server.base_url, monkeypatch)

    ds = load_dataset("digits-real", str(data_dir), download=True)

    assert ds.domains == ("mnist", "usps", "svhn") and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    for split, n in (("train", MNIST_TRAIN), ("test", MNIST_TEST)):
        x, y, d = (getattr(ds, f"{split}_{k}").numpy() for k in ("x", "y", "domain"))
        assert list(d) == [0] * n + [1] * n + [2] * n
        # MNIST: padded by 2, grey replicated
        want = np.pad(getattr(mnist, f"{split}_x")[:, 0], ((0, 0), (2, 2), (2, 2)))
        assert np.array_equal(x[:n], np.repeat(want[:, None], 3, axis=1))
        assert np.array_equal(y[:n], getattr(mnist, f"{split}_y"))
        # USPS: decoded by torchvision, upsampled 16 -> 32 (a constant image stays constant)
        levels, labels = usps[split]
        first = 1 if split == "train" else 0
        assert np.array_equal(x[n + first:2 * n], np.broadcast_to(levels[first:, :1, :1, None].transpose(0, 3, 1, 2),
                                                                (n - first, 3, 32, 32)))
        assert np.array_equal(y[n:2 * n], labels)
        # SVHN: [32, 32, 3, N] -> [N, 3, 32, 32]; label 10 -> 0
        images, digits = svhn[split]
        assert np.array_equal(x[2 * n:], images) and np.array_equal(y[2 * n:], digits)
    half = ds.train_x[MNIST_TRAIN, 0].numpy()  # USPS image 0: left half dark, right half bright
    assert (half[:, :14] == 0).all() and (half[:, 18:] == 255).all()
    assert np.array_equal(ds.train_x[2 * MNIST_TRAIN].numpy(), _cifar_known_image())
    assert {"/usps.bz2", "/usps.t.bz2", "/train_32x32.mat", "/test_32x32.mat"} <= set(server.paths)
    assert mnist.requested_paths <= set(server.paths)


def test_digits_real_without_files_names_the_offline_choice(data_dir):
    with pytest.raises(RuntimeError, match="could not load digits-real .*use --dataset digits"):
        load_dataset("digits-real", str(data_dir), download=False)
