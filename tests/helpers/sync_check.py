"""A test-only callback: after training, every rank checks that all ranks hold the same parameters."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class AssertParametersEqual(Callback):
    """Gathers the flattened parameters from all ranks and writes 'equal' or 'differ' to ``out_dir``."""

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(flat)
        same = all(torch.equal(gathered[0], g) for g in gathered) if gathered.dim() == 2 else True
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        name = f"rank{trainer.global_rank}-of-{trainer.world_size}-pid{os.getpid()}.txt"
        Path(self.out_dir, name).write_text(
            f"{'equal' if same else 'differ'} steps={trainer.global_step} norm={flat.norm().item():.6f}\n"
        )
