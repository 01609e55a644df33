"""Datasets: MNIST and FashionMNIST data modules, their sources and the IDX file format."""

from .checksums import ChecksumError
from .datamodules import FashionMNISTDataModule, IDXDataModule, MNISTDataModule
from .idx import read_idx, write_idx
from .sampler import EpochSeededSampler, MidEpochResume, ResumableDataLoader
from .sources import DataNotFoundError, load_split

__all__ = [
    "ChecksumError",
    "DataNotFoundError",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "IDXDataModule",
    "MNISTDataModule",
    "MidEpochResume",
    "ResumableDataLoader",
    "load_split",
    "read_idx",
    "write_idx",
]
