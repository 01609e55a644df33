"""Resumable training data: a sampler whose order depends only on (seed, epoch), a train loader that can continue an
epoch where a checkpoint left it, and the callback that makes Lightning continue a cut epoch instead of skipping it.

Why the callback: when training stops in the middle of an epoch (``max_time``, ``max_steps``, ``trainer.should_stop``),
Lightning still closes the epoch (its progress says "processed"), so a checkpoint written at that point resumes at the
*next* epoch and the rest of the cut epoch is skipped without a word. ``MidEpochResume`` reopens such an epoch
when the checkpoint is loaded (the checkpoint records whether the epoch's last batch was reached), and tells every
``ResumableDataLoader`` how many batches of it were already trained; a loader that cannot skip them gets a
warning that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(n)`` drawn from ``seed + epoch``; Lightning calls ``set_epoch`` each epoch.

    Args:
        n: the dataset's length, in samples (integer >= 0).
        seed: the base seed (integer; ``seed + epoch`` seeds each epoch's permutation; default 0).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the permutation of ``epoch``.

        Args:
            epoch: the epoch (integer >= 0; ``seed + epoch`` seeds the permutation).
        """
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _sampler_epoch(loader: DataLoader) -> int | None:
    """The epoch the loader's sampler was last set to (Lightning's ``DistributedSamplerWrapper`` has one too)."""
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        epoch = getattr(sampler, "epoch", None)
        if isinstance(epoch, int):
            return epoch
    return None


def _length(loader: DataLoader) -> float:
    """Batches in a pass of ``loader`` (infinite when it has no length)."""
    try:
        return len(loader)
    except TypeError:
        return float("inf")


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that can continue an epoch from a checkpoint (Lightning's ``state_dict`` protocol).

    Its state is the epoch of the current pass and the batches it has yielded in it. After ``load_state_dict`` (or
    ``resume_at``), the next pass of that same epoch skips the batches already trained (read and dropped) and
    yields the rest, in the same order as the uninterrupted pass: the sampler's order must depend only on its
    epoch (``EpochSeededSampler``, or ``DistributedSampler`` / Lightning's wrapper of it under DDP). A pass of
    another epoch is not affected, nor is any pass after a complete one. The underlying iterator starts at the first
    batch requested, so it sees the epoch that Lightning sets on the sampler after ``iter()``.
    """

    # class-level defaults, so that the constructor stays DataLoader's own (Lightning rebuilds loaders under DDP)
    _pass_epoch: int | None = None
    _yielded: int = 0
    _resume: tuple[int | None, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the current (or last) pass and the batches yielded in it."""
        return {"epoch": self._pass_epoch, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Skip ``state_dict["batches"]`` batches at the next pass, if it is of epoch ``state_dict["epoch"]``.

        Args:
            state_dict: what ``state_dict`` returned: ``{"epoch": int or None, "batches": int >= 0}``.
        """
        self.resume_at(state_dict["epoch"], int(state_dict["batches"]))

    def resume_at(self, epoch: int | None, batches: int) -> None:
        """Make the next pass skip its first ``batches`` batches when it is a pass of ``epoch``.

        Args:
            epoch: the epoch of the pass to continue (integer; None: the next pass; ignored without a sampler epoch).
            batches: the batches already trained in that pass, read and dropped (integer >= 0; 0, or at least the
                pass's length, skips none).
        """
        if batches < 0:
            raise ValueError(f"batches must be >= 0, got {batches}")
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch = _sampler_epoch(self)
        resume, self._resume = self._resume, None
        same_epoch = resume is not None and (resume[0] is None or epoch is None or resume[0] == epoch)
        skip = resume[1] if resume is not None and same_epoch else 0
        if skip and skip >= _length(self):
            skip = 0  # the saved pass was complete: nothing to continue, this is a new one
        self._pass_epoch, self._yielded = epoch, 0
        batches = super().__iter__()
        for _ in zip(range(skip), batches, strict=False):  # read and drop what was trained
            self._yielded += 1
        for batch in batches:
            self._yielded += 1
            yield batch


def _continue_where_stopped(checkpoint: dict[str, Any], iteration_based: bool) -> tuple[int, int] | None:
    """Edit the checkpoint's fit-loop progress in place so that Lightning resumes where training stopped.

    An epoch closed before its last batch (a stop mid-epoch) is reopened; returns ``(epoch, batches trained in it)``.
    After an epoch that did end at its last batch, an iteration-based resume (``max_steps`` set) would carry that
    epoch's batch count into the next one and cut it short (Lightning issue #19617): the count is cleared and the
    epoch marked completed, as Lightning does itself when it resumes by epochs.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return None
    epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    total = epochs["total"]
    if total["started"] < 1 or total["processed"] != total["started"]:
        return None  # nothing trained yet, or saved inside an epoch: Lightning restarts it mid-epoch by itself
    if batches.get("is_last_batch", True):
        if iteration_based:
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False
            for tracker in (epochs["total"], epochs["current"]):
                tracker["completed"] = tracker["processed"]
        return None
    for tracker in (epochs["total"], epochs["current"]):
        if tracker["started"] >= 1 and tracker["processed"] == tracker["started"]:
            tracker["processed"] -= 1
            tracker["completed"] = min(tracker["completed"], tracker["processed"])
    return total["started"] - 1, batches["current"]["processed"]


class MidEpochResume(Callback):
    """Resume a run cut in the middle of an epoch at the batch where it stopped, not at the next epoch.

    On loading a checkpoint whose epoch ended before its last batch (``max_time``, ``max_steps``,
    ``trainer.should_stop``), reopens that epoch in the checkpoint's loop progress so Lightning continues it (and
    after an epoch that did end, lets a resume with ``max_steps`` start the next one at its first batch). When
    Lightning restarts mid-epoch, tells each ``ResumableDataLoader`` of the training data how many batches of the
    epoch were already trained (Lightning itself does not restore a loader built before the checkpoint's loops, as
    ``estimated_stepping_batches`` does). A loader that cannot skip them gets a warning saying what will happen
    instead and what to do.
    """

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return
        reopened = _continue_where_stopped(checkpoint, iteration_based=trainer.max_steps != -1)
        if reopened is not None:
            epoch, done = reopened
            rank_zero_info(f"MidEpochResume: the checkpoint was written after a stop at batch {done} of epoch "
                           f"{epoch}; continuing that epoch from there.")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fit_loop = trainer.fit_loop
        done = fit_loop.epoch_loop.batch_progress.current.processed
        if not fit_loop.restarted_mid_epoch or done == 0 or trainer.train_dataloader is None:
            return
        epoch = fit_loop.epoch_progress.current.processed  # what Lightning passes to the samplers' set_epoch
        total = trainer.num_training_batches
        for loader in CombinedLoader(trainer.train_dataloader).flattened:
            if isinstance(loader, ResumableDataLoader):
                loader.resume_at(epoch, done)
            elif not isinstance(loader, _Stateful):
                rank_zero_warn(
                    f"Resuming epoch {epoch} at batch {done} of {total}, but the training DataLoader "
                    f"({type(loader).__name__}) cannot skip the {done} batches already trained: the rest of this "
                    f"epoch runs its first {total - done} batches again instead of its last ones, so the run will not "
                    "match an uninterrupted one. Use lightning_ep.data.sampler.ResumableDataLoader with a sampler "
                    "whose order depends only on the epoch (EpochSeededSampler), or resume from a checkpoint written "
                    "at the end of an epoch."
                )
