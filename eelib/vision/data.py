"""Named image data sets with fixed train / validation / test splits.

One call, ``load_data(name)``, returns a :class:`DataSplits` of three torch datasets with
normalised images of shape ``(C, H, W)`` and integer labels. The splits are fixed (they do not
depend on the caller's seed), so every chapter trains, calibrates and tests on the same images.

=========  =====================================================  ===========  ==================
name       what                                                   needs         train / val / test
=========  =====================================================  ===========  ==================
mnist5k    5,000 real MNIST digits (28x28, grey) shipped in the    nothing       3,000 / 1,000 / 1,000
           package: the course's offline default                                (stratified: 300 /
                                                                                100 / 100 a class)
mnist      the full MNIST (28x28, grey), via torchvision's files  a download    55,000 / 5,000 / 10,000
cifar10    CIFAR-10 (32x32, colour), torchvision's files          a download    45,000 / 5,000 / 10,000
=========  =====================================================  ===========  ==================

Downloads go into ``$EELIB_DATA`` (default ``~/.cache/eelib/data``) in torchvision's on-disk
layout (``MNIST/raw/*-ubyte``, ``cifar-10-batches-py/``), so a folder that torchvision already
filled can be passed as ``root``. Each archive is fetched to a temporary file, checked against
torchvision's md5 and only then renamed and unpacked (into a temporary folder, then renamed); a
failed download raises :class:`eelib._util.cache.DownloadError` naming the data set, the URL, the
cache folder and the offline alternative. An unpacked folder is trusted because it can only
have been made from a verified archive.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, TensorDataset
from eelib._util.progress import tqdm

from eelib._util.cache import (DEFAULT_TIMEOUT_S, DownloadError, atomic_path, data_dir, download, ensure_writable_dir, file_digest,
                    folder_ready)

OFFLINE_DEFAULT = "mnist5k"
DATASETS = ("mnist5k", "mnist", "cifar10")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
DIGITS = tuple(str(d) for d in range(10))
SPLIT_SEED = 20240101  # fixed: the splits are part of the course, not of an experiment


def _mnist_sources() -> dict:
    from torchvision.datasets import MNIST
    return {"mirrors": list(MNIST.mirrors), "files": [tuple(r) for r in MNIST.resources]}


def _cifar10_source() -> dict:
    from torchvision.datasets import CIFAR10
    return {"url": CIFAR10.url, "filename": CIFAR10.filename, "md5": CIFAR10.tgz_md5,
            "folder": CIFAR10.base_folder}


# Where the downloadable data sets come from: torchvision's own URLs and checksums.
# Tests point these at local files to exercise the download path offline.
class _Sources(dict):
    """torchvision's URLs and checksums, read on first use: importing ``torchvision.datasets``
    takes seconds, and ``import eelib`` (every notebook kernel) should not pay them."""

    _readers = {"mnist": _mnist_sources, "cifar10": _cifar10_source}

    def __missing__(self, name: str) -> dict:
        if name not in self._readers:
            raise KeyError(name)
        self[name] = value = self._readers[name]()
        return value


SOURCES: dict[str, dict] = _Sources()


@dataclass(frozen=True)
class Loaders:
    """Data loaders for the three splits."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


@dataclass(frozen=True)
class DataSplits:
    """A data set split three ways, with what a model needs to know about it.

    Attributes:
        name: the data set's name (one of ``DATASETS``).
        train, val, test: ``TensorDataset``s of ``(image, label)``; images are float32,
            normalised with ``mean`` and ``std``, shape ``(in_channels, H, W)``.
        num_classes: number of classes.
        in_channels: 1 (grey) or 3 (colour).
        image_size: height (= width) in pixels.
        class_names: one name per class.
        mean, std: per-channel normalisation applied to the images.
    """

    name: str
    train: TensorDataset = field(repr=False)
    val: TensorDataset = field(repr=False)
    test: TensorDataset = field(repr=False)
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def loaders(self, batch_size: int = 128, *, seed: int = 0, shuffle_train: bool = True,
                eval_batch_size: int | None = None) -> Loaders:
        """Data loaders for the three splits; only the training loader shuffles (seeded).

        Args:
            batch_size: samples per training batch.
            seed: seed of the training loader's shuffling.
            shuffle_train: shuffle the training split each epoch.
            eval_batch_size: samples per batch for validation and test (default: 4x batch_size).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        eval_bs = eval_batch_size or 4 * batch_size
        generator = torch.Generator().manual_seed(seed)
        return Loaders(
            train=DataLoader(self.train, batch_size=batch_size, shuffle=shuffle_train, generator=generator),
            val=DataLoader(self.val, batch_size=eval_bs),
            test=DataLoader(self.test, batch_size=eval_bs),
        )

    def to_image(self, x: torch.Tensor) -> np.ndarray:
        """Undo the normalisation of one image ``(C, H, W)``: an array ``(H, W)`` or ``(H, W, 3)`` in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        img = (x * std + mean).clamp(0, 1).detach().cpu()
        return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _normalise(images_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) float32, normalised."""
    array = np.ascontiguousarray(images_uint8)
    x = torch.from_numpy(array if array.flags.writeable else array.copy()).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _split_off_val(n_train: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random split of the official training images into train and validation."""
    n_val = round(n_train * fraction)
    order = np.random.default_rng(SPLIT_SEED).permutation(n_train)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _dataset(images: torch.Tensor, labels, idx=None) -> TensorDataset:
    labels = torch.tensor(np.asarray(labels), dtype=torch.long)  # a copy: callers may change it
    if idx is not None:
        idx = torch.as_tensor(idx)
        images, labels = images[idx], labels[idx]
    return TensorDataset(images, labels)


MNIST5K = Path(__file__).resolve().parents[1] / "datasets" / "mnist5k.npz"  # provenance: datasets/README.md
MNIST5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 (N, 28, 28) and labels (N,), read once per process from the package,
    sha256-checked (``eelib/datasets/README.md``: what they are, where from, licence)."""
    if not MNIST5K.is_file():
        raise FileNotFoundError(f"the offline digits {MNIST5K} are missing from the installed package: "
                                f"reinstall eelib (pip install -e .)")
    if file_digest(MNIST5K, "sha256") != MNIST5K_SHA256:
        raise ValueError(f"the offline digits {MNIST5K} are damaged (their sha256 is not {MNIST5K_SHA256[:12]}...): "
                         f"reinstall eelib")
    with np.load(MNIST5K) as arrays:
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _load_mnist5k() -> DataSplits:
    raw, labels = _mnist5k_arrays()
    images = _normalise(raw, MNIST_MEAN, MNIST_STD)  # a new tensor on every call: callers may change it
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):  # stratified: 300 / 100 / 100 of each digit
        idx = rng.permutation(np.flatnonzero(labels == c))
        parts["train"].append(idx[:300])
        parts["val"].append(idx[300:400])
        parts["test"].append(idx[400:500])
    # the digits are stored grouped by class: shuffle each split (fixed order) so that its
    # first images, and any prefix of it, hold every digit
    split = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    return DataSplits("mnist5k", *(_dataset(images, labels, split[k]) for k in ("train", "val", "test")),
                      num_classes=10, in_channels=1, image_size=28, class_names=DIGITS,
                      mean=MNIST_MEAN, std=MNIST_STD)


def _download_failed(title: str, url: str, folder: Path, err: Exception, manual: str) -> DownloadError:
    return DownloadError(
        f"{title} could not be downloaded from {url} into the cache folder {folder}: {err}. "
        f"This machine may be offline. Use the offline data set instead: "
        f"load_data({OFFLINE_DEFAULT!r}) (installed with the course, no network needed); or, on a "
        f"machine with internet, {manual} and copy it into {folder} (or point EELIB_DATA / root= at it)."
    )


class _ProgressBar:
    """A byte progress bar that appears with the first received bytes (not for a failed connect)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            self.bar = tqdm(desc=self.desc, total=total, unit="B", unit_scale=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fetch(title: str, urls: list[str], dest: Path, md5: str, timeout: float, manual: str) -> Path:
    last: Exception | None = None
    for url in urls:
        bar = _ProgressBar(dest.name)
        try:
            return download(url, dest, checksum=md5, timeout=timeout, progress=bar)
        except DownloadError as err:
            last = err
        finally:
            bar.close()
    raise _download_failed(title, " or ".join(urls), dest.parent, last, manual)


def _load_mnist(root: Path, download_ok: bool, timeout: float, hint: str | None) -> DataSplits:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    src = SOURCES["mnist"]
    missing = [(f, md5) for f, md5 in src["files"] if not (raw / f[:-3]).is_file()]  # torchvision reads the unpacked files
    if missing and not download_ok:
        raise FileNotFoundError(f"MNIST is not in the cache folder {raw} (missing {missing[0][0][:-3]}) and "
                                f"download=False; call load_data('mnist') on a machine with internet, "
                                f"or use the offline data set load_data({OFFLINE_DEFAULT!r})")
    if missing:
        ensure_writable_dir(raw, what="data cache folder", hint=hint)

        def fetch(filename: str, md5: str) -> Path:
            return _fetch("MNIST", [m + filename for m in src["mirrors"]], raw / filename, md5, timeout,
                          manual=f"download {filename} from {src['mirrors'][0]}")

        # downloads first, outside the lock (each is atomic and verified: two processes at once only repeat
        # work), so that a failed download (offline) leaves nothing behind, not even a lock file
        for filename, md5 in missing:
            fetch(filename, md5)
        with FileLock(str(raw / ".download.lock")):  # one process unpacks, another waits
            for filename, md5 in missing:
                unpacked = raw / filename[:-3]
                if unpacked.is_file():
                    continue
                archive = fetch(filename, md5)  # at once: the checksum of the file already there
                with atomic_path(unpacked) as tmp, gzip.open(archive, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
    train = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    x_train = _normalise(train.data.numpy(), MNIST_MEAN, MNIST_STD)
    x_test = _normalise(test.data.numpy(), MNIST_MEAN, MNIST_STD)
    tr, va = _split_off_val(len(train.targets), 1 / 12)  # 5,000 of 60,000
    return DataSplits("mnist", _dataset(x_train, train.targets, tr), _dataset(x_train, train.targets, va),
                      _dataset(x_test, test.targets), num_classes=10, in_channels=1, image_size=28,
                      class_names=DIGITS, mean=MNIST_MEAN, std=MNIST_STD)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, list(entry["labels"] if "labels" in entry else entry["fine_labels"])


def _load_cifar10(root: Path, download_ok: bool, timeout: float, hint: str | None) -> DataSplits:
    src = SOURCES["cifar10"]
    folder = root / src["folder"]
    if not folder.is_dir() and not download_ok:
        raise FileNotFoundError(f"CIFAR-10 is not in the cache folder {root} (no {src['folder']}/) and "
                                f"download=False; call load_data('cifar10') on a machine with internet, "
                                f"or use the offline data set load_data({OFFLINE_DEFAULT!r})")
    if not folder_ready(folder):
        ensure_writable_dir(root, what="data cache folder", hint=hint)

        def fetch() -> Path:
            return _fetch("CIFAR-10", [src["url"]], root / src["filename"], src["md5"], timeout,
                          manual=f"download {src['url']}")

        # the download first, outside the lock (atomic and verified: two processes at once only repeat work),
        # so that a failed download (offline) leaves nothing behind, not even a lock file
        fetch()
        with FileLock(str(root / ".cifar10.lock")):  # one process unpacks, another waits
            if not folder.is_dir():
                archive = fetch()  # at once: the checksum of the archive already there
                with atomic_path(folder) as tmp:
                    with tarfile.open(archive, "r:gz") as tar:
                        try:
                            tar.extractall(tmp.parent, filter="data")
                        except TypeError:  # Python without tarfile filters (< 3.10.12)
                            tar.extractall(tmp.parent)
                    if not tmp.is_dir():
                        raise DownloadError(f"{archive} does not hold the folder {src['folder']}/; delete it and retry")
    batches = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_train = _normalise(np.concatenate([b[0] for b in batches]), CIFAR10_MEAN, CIFAR10_STD)
    y_train = sum((b[1] for b in batches), [])
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    tr, va = _split_off_val(len(y_train), 1 / 10)  # 5,000 of 50,000
    return DataSplits("cifar10", _dataset(x_train, y_train, tr), _dataset(x_train, y_train, va),
                      _dataset(_normalise(x_test, CIFAR10_MEAN, CIFAR10_STD), y_test),
                      num_classes=10, in_channels=3, image_size=32, class_names=CIFAR10_CLASSES,
                      mean=CIFAR10_MEAN, std=CIFAR10_STD)


def load_data(name: str = OFFLINE_DEFAULT, *, root: str | Path | None = None, download: bool = True,
              timeout: float = DEFAULT_TIMEOUT_S) -> DataSplits:
    """Load a named data set, split into train / validation / test.

    Args:
        name: ``"mnist5k"`` (offline, the default), ``"mnist"`` or ``"cifar10"``.
        root: folder for downloaded files (default ``$EELIB_DATA`` or ``~/.cache/eelib/data``).
        download: fetch missing files (``mnist``, ``cifar10``); with False a missing file is an error.
        timeout: seconds to wait for a server before giving up.

    Returns:
        The three splits and the data set's facts (classes, channels, image size).

    Raises:
        ValueError: unknown ``name``.
        DownloadError: a needed file could not be downloaded or failed its checksum.
        FileNotFoundError: a needed file is missing and ``download`` is False.
        PermissionError: the cache folder cannot be written.
    """
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a known data set; allowed: {', '.join(DATASETS)} "
                         f"({OFFLINE_DEFAULT!r} works offline)")
    if name == "mnist5k":
        return _load_mnist5k()
    folder = Path(root).expanduser() if root is not None else data_dir()
    hint = "pass a folder you can write as root=" if root is not None else None
    loader = _load_mnist if name == "mnist" else _load_cifar10
    return loader(folder, download, timeout, hint)
