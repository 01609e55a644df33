"""Test-only callbacks for runs in other processes: what each rank trained on and ended with, and a hold point at
which a test kills the process."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def fingerprints(images: torch.Tensor) -> list[str]:
    """A short hash of each sample of a batch (its bytes), to compare batches across processes."""
    return [hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16] for x in images]


def _parameters(module: LightningModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters()}


class TrainingTrace(Callback):
    """Writes ``trace-rank<r>.pt`` to ``out_dir`` at the end of training: the global step, the samples of every
    training batch (by global step), the parameters at the start of training (after a resume: as restored) and at
    its end.

    Args:
        out_dir: the folder of the trace files (made if missing).
    """

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir = out_dir
        self.batches: dict[int, list[str]] = {}

        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = _parameters(pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches[trainer.global_step + 1] = fingerprints(batch[0])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        trace = {"global_step": trainer.global_step, "world_size": trainer.world_size, "batches": self.batches,
                 "initial": self.initial, "params": _parameters(pl_module)}
        torch.save(trace, Path(self.out_dir, f"trace-rank{trainer.global_rank}.pt"))


class HoldAfterStep(Callback):
    """When ``step`` training steps are done (and the checkpoint callbacks have run on the last of them), writes
    ``marker`` (this process's id) and waits there, in the middle of training, for the test to kill the process.

    Args:
        step: the global step after which to hold.
        marker: the file to write when holding.
        timeout: seconds to wait before giving up with an error (so that a failed test leaves no process behind).
    """

    def __init__(self, step: int, marker: str, timeout: float = 300.0) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        tmp = Path(f"{self.marker}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.marker)  # the marker appears whole
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError(f"HoldAfterStep: not killed within {self.timeout} s of step {self.step}")
