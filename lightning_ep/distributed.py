"""``DestroyProcessGroupAtExit``: a DDP process ends with its process group destroyed, not torn down at finalization.

Lightning destroys an NCCL process group at exit but leaves a gloo one (DDP on CPU) to the interpreter's
finalization. There gloo's worker threads may still hold tensors with Python references; releasing them then takes
the GIL of an interpreter that is shutting down and aborts the process now and then (``terminate called without an
active exception``, the rank dies with SIGABRT after training finished). This callback registers
``torch.distributed.destroy_process_group`` to run at exit, while the interpreter is still whole, as Lightning does
for NCCL. Both LightningModules of this package add it themselves (``configure_callbacks``).
"""

from __future__ import annotations

import atexit

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def destroy_process_group() -> None:
    """Destroys the default process group if one is up (an exit handler: a no-op after an explicit destroy)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class DestroyProcessGroupAtExit(Callback):
    """Registers ``destroy_process_group`` as an exit handler of every process a distributed run sets up."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.unregister(destroy_process_group)  # once per process, however many runs it sets up
            atexit.register(destroy_process_group)
