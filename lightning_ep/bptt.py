"""BPTT through the same dynamics (through the spikes with their surrogate gradient), differentiated by autograd.

``bptt_loss``, the oracle: the loss at the end of the free phase; EP is judged against its gradient.
``nudged_bptt_loss``, the trainer (the default of ``method="bptt"``): the loss at the end of a nudged phase of
strength ``nudge`` from the free state. By the EP identity d/dβ ∂F/∂θ(s^β) = d/dθ ℓ(s^β), EP's symmetric estimate at
β is the exact gradient of the loss averaged over the nudged equilibria, (1/2β)∫_{-β}^{β} ℓ(s^{β'}) dβ'; with
``nudge`` drawn uniformly from [-β, β] (per sample: ``draw_nudges``), the nudged BPTT gradient is an unbiased
sample of that gradient (at settled phases), so BPTT and EP optimise the same objective. (Plain BPTT is EP's
β → 0 limit, which trains worse.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_ep.dynamics import DivergenceError, NetworkState, Relaxation, StartKind, UpdateOrder, input_drive, relax
from lightning_ep.network import ConvergentNetwork
from lightning_ep.phases import check_steps, run_free_phase


@dataclass
class BPTTResult:
    """``loss.backward()`` writes the BPTT gradient.

    Attributes:
        loss: the batch's mean loss (a scalar, with the autograd graph).
        logits: the free state's logits, ``(B, num_classes)`` (the prediction).
        free: the free phase.
        nudged: the nudged phase the loss is taken after (``nudged_bptt_loss``; None for ``bptt_loss``).
    """

    loss: Tensor
    logits: Tensor
    free: Relaxation
    nudged: Relaxation | None = None  # the nudged phase the loss is taken after (``nudged_bptt_loss``)


def bptt_loss(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    t1: int = 60,
    update: UpdateOrder = "async",
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    truncate: int | None = None,
) -> BPTTResult:
    """Mean loss after ``t1`` free steps from ``start`` (``run_free_phase``), with the
    autograd graph through all of them (and through the feed-forward sweep of ``start="feedforward"``, whose spikes
    count as the free phase's).

    Args:
        net: the network.
        x: the input batch, ``(B, *net.input_shape)``, finite floats.
        y: the labels, class indices in ``[0, num_classes)`` of any integer dtype.
        t1: the free phase's steps (integer >= 1; default 60).
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        start: the start state: a state, ``'zeros'`` (None) or ``'feedforward'`` (a sweep).
        omega: the relaxation factor, in (0, 2) (default 1).
        truncate: backpropagate through the last ``truncate`` steps only (integer in [1, t1]): the first
            ``t1 - truncate`` run without a graph and the gradient flows from the state they reached (truncated
            BPTT, as the EP reference codes' BPTT baseline). None: all ``t1`` steps.

    Raises:
        ValueError: a bad batch or setting (each message names it).
        DivergenceError: the loss is NaN or inf.
    """
    net.check_input(x, y)
    check_steps("t1", t1)
    if truncate is not None:
        check_steps("truncate", truncate)
        if truncate > t1:
            raise ValueError(f"truncate ({truncate}) must be <= t1 ({t1}): it counts the last steps backpropagated")
    y = y.long()  # cross_entropy and one_hot take int64 only (no copy when y is int64 already)
    free = run_free_phase(net, x, t1, update, start=start, omega=omega, grad=True, truncate=truncate)
    logits = net.logits(free.state.s)
    loss = _finite_mean_loss(net, free.state, y)
    return BPTTResult(loss, logits, free)


def nudged_bptt_loss(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    nudge: float | Tensor,
    t1: int = 60,
    t2: int = 20,
    update: UpdateOrder = "async",
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    nudged_omega: float = 1.0,
) -> BPTTResult:
    """Mean loss after ``t2`` steps nudged at strength ``nudge`` from the state ``t1`` free steps from ``start``
    reached, with the autograd graph through the nudged steps only (and through the input drive); the free phase
    runs without a graph. ``logits``: the free state's (the prediction). Draw ``nudge`` uniformly from [-beta, beta]
    (``draw_nudges``) to sample the gradient of EP's objective.

    Args:
        net: the network.
        x: the input batch, ``(B, *net.input_shape)``, finite floats.
        y: the labels, class indices in ``[0, num_classes)`` of any integer dtype.
        nudge: the nudge strength, dimensionless, of either sign as EP's phases: a float for the batch or a
            ``(batch,)`` tensor of one per sample (finite; > -1 with the mse output).
        t1: the free phase's steps (integer >= 1; default 60).
        t2: the nudged phase's steps (integer >= 1; default 20).
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        start: the free phase's start state: a state, ``'zeros'`` (None) or ``'feedforward'`` (a sweep).
        omega: the free phase's relaxation factor, in (0, 2) (default 1).
        nudged_omega: the nudged steps' relaxation factor, in (0, 2): plain steps (1) by default, since over-relaxed
            steps overshoot by design and BPTT through an overshooting, unsettled phase can collapse training.

    Raises:
        ValueError: a bad batch or setting (each message names it).
        DivergenceError: the loss is NaN or inf.
    """
    net.check_input(x, y)
    check_steps("t1", t1)
    check_steps("t2", t2)
    strengths = torch.as_tensor(nudge, dtype=torch.float64)
    if not bool(torch.isfinite(strengths).all()):
        raise ValueError(f"nudge (the strength of the nudged phase) must be finite, got {nudge}")
    if net.readout is None and bool((strengths <= -1.0).any()):
        raise ValueError(f"nudge must be > -1 with the mse output (1 + nudge > 0), got {nudge}")
    y = y.long()
    free = run_free_phase(net, x, t1, update, start=start, omega=omega)
    x_drive = input_drive(net, x)  # with its graph: the drive's parameters get their gradient too
    nudged = relax(net, x_drive, free.state.detach(), t2, nudge, y, update=update, omega=nudged_omega)
    loss = _finite_mean_loss(net, nudged.state, y)
    return BPTTResult(loss, net.logits(free.state.s), free, nudged)


def _finite_mean_loss(net: ConvergentNetwork, state: NetworkState, y: Tensor) -> Tensor:
    """The batch's mean loss at ``state``; a DivergenceError when it is not finite."""
    loss = net.loss(state.s, y).mean()
    if not torch.isfinite(loss):
        raise DivergenceError(f"the BPTT loss is {loss.item()}: a parameter is probably inf/NaN. Lower the "
                              "learning rate, or clip the gradients.")
    return loss


def draw_nudges(beta: float, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """One nudge strength per sample, drawn uniformly from [-beta, beta] (float64, on the CPU, from ``generator``):
    per sample rather than one per batch, so that the batch's gradient averages over the nudges.

    Args:
        beta: the largest nudge strength, dimensionless (finite, >= 0; e.g. EP's ``beta``).
        batch: the number of samples, one nudge each (integer >= 0).
        generator: a CPU generator to draw from (None: the global one).
    """
    return (2.0 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1.0) * beta
