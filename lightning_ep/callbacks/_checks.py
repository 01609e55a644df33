"""Argument and setup checks shared by the callbacks: each raises an error that names the callback and the fix."""

from __future__ import annotations

import lightning.pytorch as pl

from lightning_ep.module import EPLightningModule


def check_every_n_steps(every_n_steps: int) -> int:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
    return every_n_steps


def check_t1(t1: int | None, name: str = "bptt_t1") -> int | None:
    if t1 is not None and (isinstance(t1, bool) or not isinstance(t1, int) or t1 < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None (the module's t1), got {t1!r}")
    return t1


def check_ep_module(callback: str, pl_module: pl.LightningModule, stage: str, needs_ep: bool) -> EPLightningModule:
    """The module as an ``EPLightningModule``; with ``needs_ep``, one trained by EP (at fit)."""
    if not isinstance(pl_module, EPLightningModule):
        raise TypeError(
            f"{callback} needs a lightning_ep.module.EPLightningModule (it reads the EP phases, the network "
            f"`.net` and its phases settings), got {type(pl_module).__module__}.{type(pl_module).__name__}"
        )
    if needs_ep and stage == "fit" and pl_module.method != "ep":
        raise ValueError(
            f"{callback} compares EP against BPTT, but the module trains with method={pl_module.method!r}: "
            "use method='ep' or remove the callback"
        )
    return pl_module
