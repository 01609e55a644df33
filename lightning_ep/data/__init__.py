"""Datasets: MNIST and FashionMNIST data modules, their sources, the IDX file format and seeded augmentation."""

from .augmentation import Augmentation, AugmentedDataLoader, IndexedDataset, shift_and_flip
from .catalog import DataNotFoundError
from .checksums import ChecksumError
from .datamodules import FashionMNISTDataModule, IDXDataModule, MNISTDataModule
from .idx import read_idx, write_idx
from .loading import load_split
from .sampler import EpochSeededSampler, MidEpochResume, ResumableDataLoader

__all__ = [
    "Augmentation",
    "AugmentedDataLoader",
    "ChecksumError",
    "DataNotFoundError",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "IDXDataModule",
    "IndexedDataset",
    "MNISTDataModule",
    "MidEpochResume",
    "ResumableDataLoader",
    "load_split",
    "read_idx",
    "shift_and_flip",
    "write_idx",
]
