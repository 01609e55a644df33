"""Shared fixtures: a tiny synthetic (image, label) data module and a tiny EP module that trains in seconds."""

from __future__ import annotations

import os

import pytest
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_ep.data.sampler import EpochSeededSampler
from lightning_ep.data.sources import DEBIAN_FASHION_MNIST_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The tests use tiny tensors: one intra-op thread is faster, and immune to other processes on a 2-core machine.
torch.set_num_threads(1)


class PatternDataModule(LightningDataModule):
    """``num_classes`` fixed random patterns plus noise: learnable in a few dozen steps."""

    def __init__(self, shape: tuple[int, ...] = (3, 10, 10), num_classes: int = 4, n: int = 256,
                 batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        patterns = (torch.rand(num_classes, *shape, generator=g) > 0.5).float()
        labels = torch.randint(0, num_classes, (n,), generator=g)
        images = (0.7 * patterns[labels] + 0.3 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
        self.data = TensorDataset(images, labels)
        self.batch_size = batch_size
        self.input_shape = shape
        self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, sampler=EpochSeededSampler(len(self.data), seed=1))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)


needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"FashionMNIST not installed in {DEBIAN_FASHION_MNIST_DIR}: apt-get install -y dataset-fashion-mnist "
    "(scripts/setup.sh does it)",
)

TINY = dict(channels=[4], kernel_size=3, hidden=[16], t1=20, t2=8, beta=0.2, lr=1e-2)


@pytest.fixture
def patterns() -> PatternDataModule:
    return PatternDataModule()
