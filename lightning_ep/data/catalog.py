"""The datasets this package knows: their keys, folder names, download mirrors and split file names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DatasetName = Literal["mnist", "fashion_mnist"]


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
"""The datasets this package loads, by name: their file names and download mirrors (tried in order)."""


class DataNotFoundError(FileNotFoundError):
    """No source holds the requested dataset; the message lists every way to provide it."""


def dataset_info(dataset: str) -> DatasetInfo:
    """The ``DatasetInfo`` of ``dataset``; ``ValueError`` naming the known keys when there is none."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def split_files(train: bool) -> tuple[str, str]:
    """Base names (without ``.gz``) of the images and labels IDX files of a split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
