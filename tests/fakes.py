"""Tiny stand-ins for downloadable data sets, written in torchvision's on-disk formats."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def write_fake_cifar10(root: Path, n_per_batch: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch (pickled dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    return folder


def make_fake_cifar10_archive(workdir: Path) -> tuple[Path, str]:
    """A ``cifar-10-python.tar.gz`` holding a fake folder; returns the path and its md5."""
    src = workdir / "src"
    write_fake_cifar10(src)
    archive = workdir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def write_fake_mnist_gz(folder: Path, n_train: int = 24, n_test: int = 12, seed: int = 0) -> dict[str, str]:
    """The four MNIST ``.gz`` files (idx format) in ``folder``; returns {file name: md5}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
        labels = struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        for kind, payload in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(payload, mtime=0)
            (folder / name).write_bytes(data)
            files[name] = hashlib.md5(data).hexdigest()
    return files
