"""Seeded training-set augmentation: random shifts (zero fill) and horizontal flips of image batches.

The draws of sample ``i`` in epoch ``e`` are a pure function of ``(seed, e, i)``: row ``i % BLOCK`` of a table drawn
by a ``torch.Generator`` seeded from ``(seed, e, i // BLOCK)``. So two runs with one seed see the same batches, a run
resumed mid-epoch sees the batches of the uninterrupted run, epochs differ, and under DDP a sample gets the same
augmentation whichever rank loads it. The batches are augmented in the main process, vectorised, after collation:
the loader knows the epoch there (worker processes, persistent or not, do not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from .sampler import ResumableDataLoader

BLOCK = 4096  # samples per generator: drawing a table per (seed, epoch) block costs ~0.1 ms


def shift_and_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``images`` (N, C, H, W) by ``dy[n]`` rows down and ``dx[n]`` columns right, filling
    with zeros (``torch.roll`` without the wrap-around), then mirror it left-right where ``flip[n]`` is true.

    Args:
        images: a batch of images (N, C, H, W).
        dy: rows to move each image down (N,), negative for up.
        dx: columns to move each image right (N,), negative for left.
        flip: which images to mirror left-right (N,), bool or 0/1.
    """
    n, c, h, w = images.shape
    pad = int(max(dy.abs().max(), dx.abs().max())) if n else 0
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = pad - dy.view(n, 1, 1) + torch.arange(h).view(1, h, 1)  # output row y reads input row y - dy
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip.view(n, 1).bool(), cols.flip(-1), cols)  # the mirror reads the shifted image at w-1-x
    cols = (pad - dx.view(n, 1) + cols).view(n, 1, w)
    index = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)  # into the flattened padded image
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def _block_seed(seed: int, epoch: int, block: int) -> int:
    """A 63-bit generator seed for one (seed, epoch, block), unrelated to the sampler's ``seed + epoch``."""
    digest = hashlib.blake2b(f"lightning_ep.augment:{seed}:{epoch}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class Augmentation:
    """Random shifts in ``[-shift, shift]`` on each axis and (with ``hflip``) left-right flips with probability 0.5,
    drawn per sample from ``(seed, epoch, sample index)`` only.

    Args:
        shift: largest translation in pixels on each axis (0: no shifts).
        hflip: mirror half of the images left-right.
        seed: seed of the draws.
    """

    def __init__(self, shift: int = 0, hflip: bool = False, seed: int = 0) -> None:
        if shift < 0:
            raise ValueError(f"shift must be >= 0 (0 turns shifts off), got {shift}")
        self.shift = int(shift)
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self._tables: tuple[int, torch.Tensor] | None = None  # (epoch, draws of indices 0..len-1 of that epoch)

    def __repr__(self) -> str:
        return f"Augmentation(shift={self.shift}, hflip={self.hflip}, seed={self.seed})"

    def _block(self, epoch: int, block: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_block_seed(self.seed, epoch, block))
        shifts = torch.randint(-self.shift, self.shift + 1, (BLOCK, 2), generator=g)
        flips = torch.randint(0, 2, (BLOCK, 1), generator=g) * int(self.hflip)
        return torch.cat([shifts, flips], dim=1)

    def draws(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """The (dy, dx, flip) of each sample index in ``indices`` at ``epoch``, as an (N, 3) int64 tensor.

        Args:
            epoch: the training epoch (integer; each epoch draws anew).
            indices: the samples' indices in the dataset, (N,) integers >= 0 (a tensor, or what ``torch.as_tensor``
                takes).
        """
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if indices.numel() and int(indices.min()) < 0:
            raise ValueError(f"sample indices must be >= 0, got {int(indices.min())}")
        if self._tables is None or self._tables[0] != epoch:
            self._tables = (epoch, torch.empty(0, 3, dtype=torch.int64))
        table = self._tables[1]
        needed = int(indices.max()) + 1 if indices.numel() else 0
        if needed > len(table):  # extend by whole blocks; one epoch draws each block once
            blocks = range(len(table) // BLOCK, -(-needed // BLOCK))
            table = torch.cat([table, *(self._block(epoch, b) for b in blocks)])
            self._tables = (epoch, table)
        return table[indices]

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """``images`` (N, C, H, W) of samples ``indices``, shifted and flipped as drawn for ``epoch``."""
        if self.shift >= min(images.shape[-2:]):
            raise ValueError(f"shift={self.shift} moves the whole {tuple(images.shape[-2:])} image out: use a shift "
                             "smaller than the image (2 to 4 pixels is typical for 28x28)")
        dy, dx, flip = self.draws(epoch, indices).unbind(1)
        return shift_and_flip(images, dy, dx, flip)


class IndexedDataset(Dataset):
    """``dataset[i]`` with ``i`` appended (``(image, label, i)``), so the loader knows which sample it augments.

    Args:
        dataset: a map-style dataset of ``(image, label)`` pairs.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class AugmentedDataLoader(ResumableDataLoader):
    """A ``ResumableDataLoader`` over an ``IndexedDataset`` that yields ``(augment(images), labels)``,
    augmenting each batch for the epoch its sampler was set to (0 for a sampler without epochs). Batches skipped to
    continue a cut epoch are not augmented; the others are exactly those of the uninterrupted pass.

    Args:
        dataset: the training set, wrapped so that it yields each sample's index.
        *args: passed on to ``ResumableDataLoader`` (batch size, sampler, ...).
        augment: the seeded augmentation applied to every batch.
        **kwargs: passed on to ``ResumableDataLoader``.
    """

    def __init__(self, dataset: IndexedDataset, *args: Any, augment: Augmentation, **kwargs: Any) -> None:
        if not isinstance(dataset, IndexedDataset):
            raise ValueError(f"AugmentedDataLoader needs an IndexedDataset (to know each sample's index), got "
                             f"{type(dataset).__name__}: wrap it as IndexedDataset(dataset)")
        super().__init__(dataset, *args, **kwargs)
        self.augment = augment  # public: Lightning rebuilds the loader under DDP from its attributes or saved args

    def _batches(self) -> Iterator[Any]:
        for images, labels, indices in super()._batches():
            yield self.augment(images, indices, self._pass_epoch or 0), labels
