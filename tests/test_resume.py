"""Resuming a run cut in the middle of an epoch (``max_time``, ``max_steps``, ``trainer.should_stop``, a mid-epoch
checkpoint; one device or DDP) ends with the same parameters, on the same batches in the same order, as the
uninterrupted run; a loader that cannot continue an epoch is reported, never skipped silently."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import PatternDataModule, settings
from helpers.stop_at import StopAt
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, timer
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, TensorDataset

from lightning_ep.data import MNISTDataModule, write_idx
from lightning_ep.data.sampler import EpochSeededSampler, MidEpochResume, ResumableDataLoader
from lightning_ep.module import EPLightningModule

EPOCHS = 2  # PatternDataModule: 256 samples in batches of 32, 8 batches an epoch


class Record(Callback):
    """The (epoch, batch index, labels) of every training batch, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, tuple[int, ...]]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, tuple(batch[1].tolist())))




class Tick(Callback):
    """A clock for Lightning's Timer that advances one minute a training batch (deterministic ``max_time``)."""

    def __init__(self) -> None:
        self.minutes = 0

    def monotonic(self) -> float:
        return 60.0 * self.minutes

    def on_train_batch_end(self, *args: Any) -> None:
        self.minutes += 1


def _fit(root: Path, datamodule: LightningDataModule, callbacks: list[Callback], ckpt: Path | None = None,
         model_kw: dict[str, Any] | None = None, **trainer_kw: Any) -> tuple[EPLightningModule, Trainer, Record]:
    """One fit of the tiny random-sign EP module (cosine LR schedule, its own generator) from seed 0."""
    seed_everything(0)
    shapes = {"input_shape": datamodule.input_shape, "num_classes": datamodule.num_classes}
    groups = settings(network=shapes, ep={"estimator": "random_sign"})
    model = EPLightningModule(**settings(groups, **(model_kw or {})))
    record = Record()
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=root, max_epochs=EPOCHS, limit_val_batches=0, enable_checkpointing=False)
    trainer = Trainer(**{**kw, **trainer_kw}, callbacks=[*callbacks, record, MidEpochResume()])  # the fix
    trainer.fit(model, datamodule, ckpt_path=ckpt)
    return model, trainer, record


def _assert_same(straight: tuple, cut: tuple, resumed: tuple) -> None:
    """The cut + resumed runs saw the straight run's batches and end with its parameters, generator and LR state."""
    (model_a, trainer_a, record_a), (_, _, record_b), (model_c, trainer_c, record_c) = straight, cut, resumed
    assert record_b.seen + record_c.seen == record_a.seen, "the cut and resumed runs did not train on the same batches"
    assert trainer_c.global_step == trainer_a.global_step and trainer_c.current_epoch == trainer_a.current_epoch
    for (name, a), c in zip(model_a.named_parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c), f"{name} differs after the resume"
    assert model_a.generator.get_state().equal(model_c.generator.get_state())
    schedulers = [[c.scheduler.state_dict() for c in t.lr_scheduler_configs] for t in (trainer_a, trainer_c)]
    assert schedulers[0] == schedulers[1]


def test_max_time_cut_mid_epoch_writes_last_ckpt_and_resumes_exactly(tmp_path, monkeypatch):
    """The issue's path: ``max_time`` stops in the middle of epoch 0, ModelCheckpoint(save_last=True) writes
    last.ckpt, and the run resumed from it continues epoch 0 at the next batch (not at epoch 1)."""
    clock = Tick()
    monkeypatch.setattr(timer, "time", SimpleNamespace(monotonic=clock.monotonic))
    val = dict(limit_val_batches=None, enable_checkpointing=True)

    def checkpoint(name: str) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tmp_path / name, monitor="val/acc", mode="max", save_last=True)

    straight = _fit(tmp_path / "a", PatternDataModule(), [checkpoint("a")], **val)
    cut = _fit(tmp_path / "b", PatternDataModule(), [clock, checkpoint("b")], max_time={"minutes": 3}, **val)
    assert cut[1].global_step == 3 and len(cut[2].seen) == 3
    last = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3, "last.ckpt was not written at the cut"
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _fit(tmp_path / "c", PatternDataModule(), [checkpoint("c")], tmp_path / "b" / "last.ckpt", **val)
    assert not [w for w in caught if "not resumable" in str(w.message) or "cannot skip" in str(w.message)]
    assert resumed[2].seen[0][:2] == (0, 3), "the resumed run did not continue epoch 0 at batch 3"
    _assert_same(straight, cut, resumed)


@pytest.mark.parametrize("saved_by", ["on_train_epoch_end", "after_fit"])
@pytest.mark.parametrize("resume_kw", [{}, {"max_steps": EPOCHS * 8}], ids=["max_epochs", "max_steps"])
@pytest.mark.parametrize("stop_step", [10, 8], ids=["epoch1-batch2", "epoch-boundary"])
def test_should_stop_then_resume_matches_uninterrupted_run(tmp_path, stop_step, resume_kw, saved_by):
    """A stop requested mid-epoch (here in epoch 1, so the sampler's epoch matters too) and a stop at the end of an
    epoch both resume to the uninterrupted run's parameters, also when the resumed run counts steps (``max_steps``:
    Lightning would carry the finished epoch's batch count into the next one, issue #19617); from last.ckpt (written
    by ModelCheckpoint in on_train_epoch_end) or from ``trainer.save_checkpoint`` after the fit."""
    straight = _fit(tmp_path / "a", PatternDataModule(), [])
    last = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    cut = _fit(tmp_path / "b", PatternDataModule(), [StopAt(stop_step), last], enable_checkpointing=True)
    assert cut[1].global_step == stop_step
    ckpt = tmp_path / "ck" / "last.ckpt"
    if saved_by == "after_fit":
        ckpt = tmp_path / "cut.ckpt"
        cut[1].save_checkpoint(ckpt)
    resumed = _fit(tmp_path / "c", PatternDataModule(), [], ckpt, **resume_kw)
    _assert_same(straight, cut, resumed)


@pytest.mark.parametrize("resume_kw", [{}, {"max_steps": EPOCHS * 8}], ids=["max_epochs", "max_steps"])
def test_max_steps_cut_mid_epoch_then_resume(tmp_path, resume_kw):
    """``max_steps`` stops in the middle of epoch 0; the resumed run (by epochs or by steps) continues it. Without an
    LR schedule: a run cut by max_steps plans its cosine schedule over those steps only."""
    constant = {"optim": {"scheduler": "none"}}
    straight = _fit(tmp_path / "a", PatternDataModule(), [], model_kw=constant)
    cut = _fit(tmp_path / "b", PatternDataModule(), [], model_kw=constant, max_steps=3)
    cut[1].save_checkpoint(tmp_path / "cut.ckpt")
    resumed = _fit(tmp_path / "c", PatternDataModule(), [], tmp_path / "cut.ckpt", model_kw=constant, **resume_kw)
    assert resumed[2].seen[0][:2] == (0, 3)
    _assert_same(straight, cut, resumed)


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path):
    """A checkpoint written during an epoch (ModelCheckpoint every 5 steps): Lightning restarts mid-epoch, and the
    loader, built before the loops are restored (``estimated_stepping_batches``), still skips what was trained."""
    every = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1)
    straight = _fit(tmp_path / "a", PatternDataModule(), [every], enable_checkpointing=True)
    (ckpt,) = (tmp_path / "ck").glob("*step=5.ckpt")
    resumed = _fit(tmp_path / "c", PatternDataModule(), [], ckpt)
    assert resumed[2].seen[0][:2] == (0, 5)
    cut = (None, None, SimpleNamespace(seen=straight[2].seen[:5]))
    _assert_same(straight, cut, resumed)


def test_dithered_run_resumes_exactly(tmp_path):
    """Dithered Sigma-Delta draws from the module's own generator every step: a run cut by max_steps and resumed
    from its checkpoint continues that stream (which both parts advance) and ends with the uninterrupted run's
    parameters."""
    kw = {"optim": {"scheduler": "none"}, "network": {"threshold": 0.05}, "ep": {"dither": True, "average_last": 4}}
    straight = _fit(tmp_path / "a", PatternDataModule(), [], model_kw=kw)
    cut = _fit(tmp_path / "b", PatternDataModule(), [], model_kw=kw, max_steps=3)
    cut[1].save_checkpoint(tmp_path / "cut.ckpt")
    resumed = _fit(tmp_path / "c", PatternDataModule(), [], tmp_path / "cut.ckpt", model_kw=kw)
    _assert_same(straight, cut, resumed)
    seeded = torch.Generator(cut[0].dither_generator.device).manual_seed(cut[0].seed).get_state()
    at_cut, at_end = cut[0].dither_generator.get_state(), resumed[0].dither_generator.get_state()
    assert not torch.equal(at_cut, seeded), "the cut run drew no dither noise: its stream is still at its seed"
    assert not torch.equal(at_end, at_cut), "the resumed run drew no dither noise after the cut"
    assert torch.equal(straight[0].dither_generator.get_state(), at_end)


def _tiny_mnist(directory: Path) -> None:
    """30 training and 10 test 28x28 images of 4 patterns plus noise, as IDX files."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 2, size=(4, 28, 28)) * 180
    for prefix, n in (("train", 30), ("t10k", 10)):
        labels = rng.integers(0, 4, size=n).astype(np.uint8)
        images = (patterns[labels] + rng.integers(0, 75, size=(n, 28, 28))).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)


def test_mnist_datamodule_resumes_mid_epoch(tmp_path):
    """The project's DataModule (its train loader is a ResumableDataLoader): cut in epoch 1, resumed exactly."""
    _tiny_mnist(tmp_path / "data")

    def data() -> MNISTDataModule:
        return MNISTDataModule(data_dir=str(tmp_path / "data"), verify_checksums=False, val_size=6, batch_size=4)

    straight = _fit(tmp_path / "a", data(), [])  # 24 training samples: 6 batches an epoch
    assert isinstance(straight[1].train_dataloader, ResumableDataLoader)
    cut = _fit(tmp_path / "b", data(), [StopAt(8)])
    cut[1].save_checkpoint(tmp_path / "cut.ckpt")
    resumed = _fit(tmp_path / "c", data(), [], tmp_path / "cut.ckpt")
    assert resumed[2].seen[0][:2] == (1, 2)
    _assert_same(straight, cut, resumed)


class PlainLoaderData(PatternDataModule):
    """PatternDataModule with a plain DataLoader for training: it cannot continue an epoch."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, sampler=EpochSeededSampler(len(self.data), seed=1))


def test_loader_that_cannot_resume_is_reported_not_skipped(tmp_path):
    """A user's DataModule with a plain loader: the cut epoch is still continued (no epoch lost, same number of
    steps), with a warning that names what happens and what to do."""
    cut = _fit(tmp_path / "b", PlainLoaderData(), [StopAt(3)])
    cut[1].save_checkpoint(tmp_path / "cut.ckpt")
    with pytest.warns(UserWarning, match=r"cannot skip the 3 batches already trained.*ResumableDataLoader"):
        resumed = _fit(tmp_path / "c", PlainLoaderData(), [], tmp_path / "cut.ckpt")
    assert [s[:2] for s in resumed[2].seen[:2]] == [(0, 3), (0, 4)]
    assert resumed[1].global_step == EPOCHS * 8


def test_ddp_cut_mid_epoch_resumes_exactly(tmp_path):
    """Two processes (ddp_spawn, gloo): each rank's loader, rebuilt by Lightning around its shard of the sampler,
    continues the cut epoch, and the resumed run ends with the uninterrupted run's parameters."""
    ddp = dict(devices=2, strategy="ddp_spawn", enable_checkpointing=True)  # 4 batches an epoch on each rank
    straight = _fit(tmp_path / "a", PatternDataModule(), [], **ddp)
    last = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    _fit(tmp_path / "b", PatternDataModule(), [StopAt(2), last], **ddp)
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    resumed = _fit(tmp_path / "c", PatternDataModule(), [], tmp_path / "ck" / "last.ckpt", **ddp)
    for (name, a), c in zip(straight[0].named_parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, c), f"{name} differs after the resume"


def test_resumable_loader_state_and_other_epochs():
    """The loader's own state round-trips; a resume point applies only to a pass of its epoch, and only once."""
    data = TensorDataset(torch.arange(20), torch.arange(20))
    sampler = EpochSeededSampler(20, seed=3)
    loader = ResumableDataLoader(data, batch_size=4, sampler=sampler)
    sampler.set_epoch(2)
    full = [b[0].tolist() for b in loader]
    it = iter(loader)
    first = [next(it)[0].tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2} and first == full[:2]

    again = ResumableDataLoader(data, batch_size=4, sampler=EpochSeededSampler(20, seed=3))
    again.load_state_dict(state)
    again.sampler.set_epoch(2)  # Lightning sets the epoch after iter(), before the first batch
    rest = iter(again)
    again.sampler.set_epoch(2)
    assert [b[0].tolist() for b in rest] == full[2:]
    assert again.state_dict() == {"epoch": 2, "batches": 5}
    assert [b[0].tolist() for b in again] == full  # used once

    other = ResumableDataLoader(data, batch_size=4, sampler=EpochSeededSampler(20, seed=3))
    other.load_state_dict(state)
    other.sampler.set_epoch(3)
    assert len(list(other)) == 5  # a pass of another epoch is whole
    with pytest.raises(ValueError, match="batches"):
        other.resume_at(0, -1)


def test_resumable_loader_under_lightning_ddp_sampler():
    """Under DDP Lightning rebuilds the loader around a DistributedSamplerWrapper of the EpochSeededSampler; the
    rebuilt loader is still resumable and each rank continues its own shard where it stopped."""
    data = TensorDataset(torch.arange(40), torch.arange(40))
    with _replace_dunder_methods(DataLoader, "dataset"):
        loader = ResumableDataLoader(data, batch_size=4, sampler=EpochSeededSampler(40, seed=5))
    shards = []
    for rank in range(2):
        wrapped = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=False)
        ddp = _update_dataloader(loader, wrapped)
        assert isinstance(ddp, ResumableDataLoader) and isinstance(ddp.sampler, DistributedSamplerWrapper)
        ddp.sampler.set_epoch(1)
        full = [b[0].tolist() for b in ddp]
        assert len(full) == 5
        ddp.resume_at(1, 3)
        assert [b[0].tolist() for b in ddp] == full[3:]
        shards.append({i for b in full for i in b})
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(40))
