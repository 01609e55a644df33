"""A callback that asks the trainer to stop after a given global step (what EarlyStopping or a Timer do)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, Trainer


class StopAt(Callback):
    """Ask the trainer to stop after global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
