"""The BPTT oracle: the loss at the end of the free phase, differentiated by autograd through every step of the
same dynamics (through the spikes with their surrogate gradient). EP is judged against its gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_ep.dynamics import (
    DivergenceError,
    NetworkState,
    Relaxation,
    StartKind,
    UpdateOrder,
    input_drive,
    relax,
    start_state,
)
from lightning_ep.network import ConvergentNetwork


@dataclass
class BPTTResult:
    """``loss.backward()`` writes the BPTT gradient."""

    loss: Tensor
    logits: Tensor
    free: Relaxation


def bptt_loss(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    t1: int = 60,
    update: UpdateOrder = "async",
    init: NetworkState | StartKind | None = None,
    omega: float = 1.0,
) -> BPTTResult:
    """Mean loss after ``t1`` free steps from ``init`` (as in :func:`~lightning_ep.ep.free_phase`), with the autograd
    graph through all of them (and through the feed-forward sweep of ``init='feedforward'``)."""
    net.check_input(x, y)
    if not isinstance(t1, int) or t1 < 1:
        raise ValueError(f"t1 (number of dynamics steps) must be an integer >= 1, got {t1!r}")
    x_drive = input_drive(net, x)
    free = relax(net, x_drive, start_state(net, x_drive, init)[0], t1, update=update, omega=omega)
    logits = net.logits(free.state.s)
    loss = net.loss(free.state.s, y).mean()
    if not torch.isfinite(loss):
        raise DivergenceError(f"the BPTT loss is {loss.item()}: a parameter is probably inf/NaN. Lower the "
                              "learning rate, or clip the gradients.")
    return BPTTResult(loss, logits, free)
