"""Seeded training-set augmentation: shifts and flips are what they claim, drawn from (seed, epoch, sample index) only,
applied to the training set only, identical after a mid-epoch resume and on every DDP rank; bad arguments say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.stop_at import StopAt
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import TensorDataset

from lightning_ep.data import (
    Augmentation,
    AugmentedDataLoader,
    EpochSeededSampler,
    FashionMNISTDataModule,
    IndexedDataset,
    MidEpochResume,
    MNISTDataModule,
    ResumableDataLoader,
    shift_and_flip,
    sources,
    write_idx,
)
from lightning_ep.data.augmentation import BLOCK


def rolled(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (..., H, W) moved ``dy`` rows down and ``dx`` columns right with zero fill: a roll, then the rows and
    columns that wrapped around zeroed (an independent computation of a shift)."""
    out = torch.roll(image, shifts=(dy, dx), dims=(-2, -1)).clone()
    h, w = image.shape[-2:]
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., h + dy :, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, w + dx :] = 0
    return out


def expected(image: torch.Tensor, dy: int, dx: int, flip: int) -> torch.Tensor:
    """Shift, then mirror left-right when ``flip``."""
    out = rolled(image, dy, dx)
    return out.flip(-1) if flip else out


def images(n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) + 0.1  # no zero pixel


# --- the pure function --------------------------------------------------------------------------------------------


def test_shift_matches_roll_with_zero_fill():
    x = images(9, (2, 7, 9))  # two channels, non-square: rows and columns are not mixed up
    dy = torch.tensor([0, 1, -1, 3, -3, 2, 0, -6, 6])
    dx = torch.tensor([0, 2, -2, -1, 4, 0, -8, 8, 1])
    out = shift_and_flip(x, dy, dx, torch.zeros(9, dtype=torch.int64))
    assert out.shape == x.shape and out.dtype == x.dtype
    for n in range(9):
        assert torch.equal(out[n], rolled(x[n], int(dy[n]), int(dx[n]))), f"image {n}: shift ({dy[n]}, {dx[n]})"
    # a known pixel lands where it should: (2, 3) moved by (1, 2) is at (3, 5)
    assert out[1, 0, 3, 5] == x[1, 0, 2, 3]


def test_flip_mirrors_after_the_shift():
    x = images(4, (1, 5, 6))
    flip = torch.tensor([1, 1, 0, 1])
    dy, dx = torch.tensor([0, 1, 1, -2]), torch.tensor([0, 2, 2, 1])
    out = shift_and_flip(x, dy, dx, flip)
    assert torch.equal(out[0], x[0].flip(-1))  # a pure mirror
    for n in range(4):
        assert torch.equal(out[n], expected(x[n], int(dy[n]), int(dx[n]), int(flip[n])))
    assert torch.equal(shift_and_flip(x, dy * 0, dx * 0, flip * 0), x)  # nothing drawn: unchanged


# --- the draws ----------------------------------------------------------------------------------------------------


def test_draws_stay_in_range_and_cover_it():
    draws = Augmentation(shift=2, hflip=True, seed=0).draws(0, torch.arange(10000))
    assert draws.shape == (10000, 3) and draws.dtype == torch.int64
    for axis in (0, 1):
        counts = torch.bincount(draws[:, axis] + 2, minlength=5)
        assert len(counts) == 5 and (counts > 1800).all() and (counts < 2200).all(), counts  # uniform on [-2, 2]
    assert set(draws[:, 2].tolist()) == {0, 1} and 4800 < draws[:, 2].sum() < 5200  # flips with probability 1/2
    assert (draws[:, 0] != draws[:, 1]).float().mean() > 0.7  # the two axes are drawn independently
    assert Augmentation(shift=2, hflip=False).draws(0, torch.arange(1000))[:, 2].eq(0).all()
    assert Augmentation(shift=0, hflip=True).draws(0, torch.arange(1000))[:, :2].eq(0).all()


def test_draws_depend_on_seed_epoch_and_index_only():
    indices = torch.arange(3 * BLOCK)
    a = Augmentation(shift=3, hflip=True, seed=5)
    full = a.draws(4, indices)
    assert torch.equal(Augmentation(shift=3, hflip=True, seed=5).draws(4, indices), full)  # same seed, same draws
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(1))[:100]
    fresh = Augmentation(shift=3, hflip=True, seed=5)
    assert torch.equal(fresh.draws(4, indices[perm]), full[perm])  # whatever the batch and the order asked
    assert torch.equal(fresh.draws(4, torch.tensor([2 * BLOCK + 7])), full[2 * BLOCK + 7 :][:1])
    a.draws(5, indices)  # another epoch in between does not change epoch 4's
    assert torch.equal(a.draws(4, indices), full)
    for other in (a.draws(5, indices), Augmentation(shift=3, hflip=True, seed=6).draws(4, indices)):
        assert (other != full).any(1).float().mean() > 0.8  # another epoch or seed: other draws


# --- the data module ----------------------------------------------------------------------------------------------

N_TRAIN, N_TEST, VAL, BATCH = 30, 10, 6, 4


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """Tiny IDX files: 30 training and 10 test images with no zero pixel, so that shifted-in zeros show."""
    rng = np.random.default_rng(0)
    for train, n in ((True, N_TRAIN), (False, N_TEST)):
        images_name, labels_name = sources.split_files(train)
        write_idx(tmp_path / images_name, rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / labels_name, (np.arange(n) % 10).astype(np.uint8))
    return str(tmp_path)


def make(data_dir: str, cls: type = FashionMNISTDataModule, **kwargs: Any) -> FashionMNISTDataModule:
    dm = cls(data_dir=data_dir, verify_checksums=False, **{"val_size": VAL, "batch_size": BATCH, **kwargs})
    dm.setup()
    return dm


def epoch_batches(loader: Any, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return [(x, y) for x, y in loader]


def per_sample(dm: FashionMNISTDataModule, epoch: int) -> torch.Tensor:
    """The training images of one epoch's pass, put back in dataset order (the sampler's order is known)."""
    x = torch.cat([b[0] for b in epoch_batches(dm.train_dataloader(), epoch)])
    sampler = EpochSeededSampler(len(dm.train_set), dm.seed)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    out = torch.empty_like(x)
    out[order] = x
    return out


def test_training_batches_are_the_drawn_shifts_and_flips(data_dir):
    dm = make(data_dir, shift=2, hflip=True, seed=3)
    originals = dm.train_set.tensors[0]
    draws = Augmentation(2, True, 3).draws(1, torch.arange(len(originals)))
    seen = per_sample(dm, 1)
    assert seen.shape == originals.shape
    moved = 0
    for i in range(len(originals)):
        dy, dx, flip = draws[i].tolist()
        assert abs(dy) <= 2 and abs(dx) <= 2
        assert torch.equal(seen[i], expected(originals[i], dy, dx, flip)), f"sample {i}"
        moved += (dy, dx, flip) != (0, 0, 0)
    assert moved > len(originals) // 2
    labels = torch.cat([b[1] for b in epoch_batches(dm.train_dataloader(), 1)])
    sampler = EpochSeededSampler(len(originals), 3)
    sampler.set_epoch(1)
    assert torch.equal(labels, dm.train_set.tensors[1][list(sampler)])  # labels untouched, same order as unaugmented


def test_epochs_differ_and_seeds_repeat(data_dir):
    a, b, c = make(data_dir, shift=2, seed=1), make(data_dir, shift=2, seed=1), make(data_dir, shift=2, seed=2)
    e0, e1 = per_sample(a, 0), per_sample(a, 1)
    assert (e0 != e1).flatten(1).any(1).float().mean() > 0.5  # a sample moves differently in the next epoch
    for epoch in (0, 1):  # same seed: the very same batches
        for (xa, ya), (xb, yb) in zip(epoch_batches(a.train_dataloader(), epoch),
                                      epoch_batches(b.train_dataloader(), epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(per_sample(c, 0), e0)  # another seed (another split too): other images


def test_validation_and_test_are_untouched(data_dir):
    dm = make(data_dir, shift=3, hflip=True)
    for loader, dataset in ((dm.val_dataloader(), dm.val_set), (dm.test_dataloader(), dm.test_set)):
        assert not isinstance(loader, ResumableDataLoader)
        x = torch.cat([b[0] for b in loader])
        y = torch.cat([b[1] for b in loader])
        assert torch.equal(x, dataset.tensors[0]) and torch.equal(y, dataset.tensors[1])
    assert isinstance(dm.train_dataloader(), AugmentedDataLoader)


def test_defaults_leave_training_data_unchanged(data_dir):
    dm = make(data_dir)
    assert dm.augmentation is None and (dm.hparams.shift, dm.hparams.hflip) == (0, False)
    loader = dm.train_dataloader()
    assert type(loader) is ResumableDataLoader and loader.dataset is dm.train_set
    x = torch.cat([b[0] for b in epoch_batches(loader, 0)])
    assert torch.equal(x, dm.train_set.tensors[0][list(EpochSeededSampler(N_TRAIN - VAL, 0))])


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FashionMNISTDataModule, {"shift": -1}, r"shift must be in \[0, 28\).*got -1"),
        (FashionMNISTDataModule, {"shift": 28}, r"shift must be in \[0, 28\).*got 28"),
        (MNISTDataModule, {"shift": 40}, "shift must be"),
        (MNISTDataModule, {"hflip": True}, "mirrored digit is not the same digit.*Use shift alone"),
    ],
)
def test_bad_arguments_say_what_to_do(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_good_arguments_and_direct_misuse():
    assert FashionMNISTDataModule(shift=27, hflip=True).augmentation is not None
    assert MNISTDataModule(shift=2).augmentation is not None
    with pytest.raises(ValueError, match="shift must be >= 0"):
        Augmentation(shift=-2)
    with pytest.raises(ValueError, match="smaller than the image"):
        Augmentation(shift=5)(images(2, (1, 5, 8)), torch.arange(2), 0)
    with pytest.raises(ValueError, match="IndexedDataset"):
        AugmentedDataLoader(TensorDataset(torch.zeros(4)), augment=Augmentation(1))


# --- resume and DDP -----------------------------------------------------------------------------------------------


def test_loader_resumed_mid_epoch_gives_the_rest_of_the_batches(data_dir):
    """The loader's own resume (what MidEpochResume drives): a fresh data module's loader, told that 2 batches of
    epoch 1 were trained, yields the uninterrupted pass's remaining augmented batches."""
    dm = make(data_dir, shift=2, hflip=True)
    full = epoch_batches(dm.train_dataloader(), 1)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    again = make(data_dir, shift=2, hflip=True).train_dataloader()
    again.load_state_dict(state)
    rest = epoch_batches(again, 1)
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full, first + rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


class Record(Callback):
    """The (epoch, batch index, images, labels) of every training batch, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, batch[0].clone(), batch[1].clone()))




class Linear(LightningModule):
    """The smallest trainable module: the test is about the batches, not the model."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(28 * 28, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root: Path, data_dir: str, callbacks: list[Callback], ckpt: Path | None = None) -> tuple[Trainer, Record]:
    record = Record()
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_epochs=2,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                      limit_val_batches=0, callbacks=[*callbacks, record, MidEpochResume()])
    torch.manual_seed(0)
    trainer.fit(Linear(), make(data_dir, shift=2, hflip=True, seed=7), ckpt_path=ckpt)
    return trainer, record


def test_run_cut_mid_epoch_resumes_on_the_same_augmented_batches(tmp_path, data_dir):
    """Lightning, MidEpochResume and the data module's loader: a run stopped at batch 2 of epoch 1 (6 batches an
    epoch) and resumed from its checkpoint trains on the uninterrupted run's augmented batches, in order."""
    _, straight = fit(tmp_path / "a", data_dir, [])
    assert len(straight.seen) == 12
    loader = make(data_dir, shift=2, hflip=True, seed=7).train_dataloader()
    for epoch in (0, 1):  # the Trainer's epochs reach the augmentation
        for (x, y), seen in zip(epoch_batches(loader, epoch), straight.seen[6 * epoch :], strict=False):
            assert torch.equal(x, seen[2]) and torch.equal(y, seen[3])
    cut_trainer, cut = fit(tmp_path / "b", data_dir, [StopAt(8)])
    cut_trainer.save_checkpoint(tmp_path / "cut.ckpt")
    _, resumed = fit(tmp_path / "c", data_dir, [], tmp_path / "cut.ckpt")
    assert resumed.seen[0][:2] == (1, 2)
    together = cut.seen + resumed.seen
    assert [s[:2] for s in together] == [s[:2] for s in straight.seen]
    for a, b in zip(straight.seen, together, strict=True):
        assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]), f"epoch {a[0]} batch {a[1]} differs"


@pytest.mark.parametrize("inside_lightning_hook", [True, False])
def test_each_ddp_rank_augments_its_samples_as_one_process_does(inside_lightning_hook):
    """Under DDP Lightning rebuilds the loader around a DistributedSamplerWrapper: the rebuilt loaders keep the
    augmentation, and each sample gets the augmentation of the single-process run, whichever rank loads it."""
    n = 40
    data = TensorDataset(images(n), torch.arange(n))  # the label is the sample's index
    augment = Augmentation(shift=3, hflip=True, seed=2)

    def build() -> AugmentedDataLoader:
        return AugmentedDataLoader(IndexedDataset(data), batch_size=4, augment=augment,
                                   sampler=EpochSeededSampler(n, seed=5))

    single = build()
    reference = torch.empty_like(data.tensors[0])
    for x, y in epoch_batches(single, 1):
        reference[y] = x
    if inside_lightning_hook:  # how the Trainer calls train_dataloader(): the constructor's arguments are saved
        with _replace_dunder_methods(torch.utils.data.DataLoader, "dataset"):
            loader = build()
    else:  # rebuilt from the loader's attributes instead
        loader = build()
    seen: dict[int, torch.Tensor] = {}
    for rank in range(2):
        wrapped = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=False)
        ddp = _update_dataloader(loader, wrapped)
        assert isinstance(ddp, AugmentedDataLoader) and isinstance(ddp.sampler, DistributedSamplerWrapper)
        assert ddp.augment is augment
        for x, y in epoch_batches(ddp, 1):
            seen.update(zip(y.tolist(), x, strict=True))
    assert sorted(seen) == list(range(n))
    for i, x in seen.items():
        assert torch.equal(x, reference[i]), f"sample {i}"
    assert not torch.equal(reference, data.tensors[0])
