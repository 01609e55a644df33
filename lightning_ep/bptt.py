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
from lightning_ep.ep import check_steps
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
    truncate: int | None = None,
) -> BPTTResult:
    """Mean loss after ``t1`` free steps from ``init`` (as in :func:`~lightning_ep.ep.free_phase`), with the autograd
    graph through all of them (and through the feed-forward sweep of ``init='feedforward'``). With ``truncate=k``
    the first ``t1 - k`` steps run without a graph and the gradient goes through the last ``k`` steps only, from
    the state they reached (truncated BPTT, as the EP reference codes' BPTT baseline). The labels ``y`` are class
    indices of any integer dtype."""
    net.check_input(x, y)
    check_steps("t1", t1)
    if truncate is not None:
        check_steps("truncate", truncate)
        if truncate > t1:
            raise ValueError(f"truncate ({truncate}) must be <= t1 ({t1}): it counts the last steps backpropagated")
    y = y.long()  # cross_entropy and one_hot take int64 only (no copy when y is int64 already)
    if truncate is None or truncate == t1:
        x_drive = input_drive(net, x)
        free = relax(net, x_drive, start_state(net, x_drive, init)[0], t1, update=update, omega=omega)
    else:
        with torch.no_grad():
            x_drive = input_drive(net, x)
            head = relax(net, x_drive, start_state(net, x_drive, init)[0], t1 - truncate, update=update, omega=omega)
        x_drive = input_drive(net, x)  # with its graph: the drive's parameters get their gradient too
        tail = relax(net, x_drive, head.state.detach(), truncate, update=update, omega=omega)
        spikes = [a + b for a, b in zip(head.spikes, tail.spikes, strict=True)]
        free = Relaxation(tail.state, t1, tail.last_change, spikes, tail.mean_change)
    logits = net.logits(free.state.s)
    loss = net.loss(free.state.s, y).mean()
    if not torch.isfinite(loss):
        raise DivergenceError(f"the BPTT loss is {loss.item()}: a parameter is probably inf/NaN. Lower the "
                              "learning rate, or clip the gradients.")
    return BPTTResult(loss, logits, free)
