"""Running a phase: the explicit or the autograd dynamics from a state, and the free phase, the one place where it
is written out (EP, both BPTT losses, the traced runners of ``lightning_ep.neuromorphic`` and ``net(x)`` call it).

    free phase:  start state (zeros, a given state, or a feed-forward sweep)  ->  relax with beta = 0

The spikes the feed-forward sweep sends to reach its start state count as the phase's, and a trace records them as
its ``start``. Nothing here imports the network: ``ConvergentNetwork.forward`` can import this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lightning_ep.dynamics import (
    NetworkState,
    Relaxation,
    StartKind,
    StepRecorder,
    UpdateOrder,
    input_drive,
    relax,
    relax_autograd,
    start_state,
)

if TYPE_CHECKING:
    from lightning_ep.network import ConvergentNetwork

Dynamics = Literal["explicit", "autograd"]


def check_steps(name: str, steps: int) -> None:
    """Raise a ValueError unless ``steps`` (a number of dynamics steps) is an integer >= 1.

    Args:
        name: the setting's name, for the message (``'t1'``, ``'t2'``, ``'truncate'``).
        steps: its value.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name} (number of dynamics steps) must be an integer >= 1, got {steps!r}")


def check_dynamics(dynamics: str, update: str, omega: float, average_last: int = 0) -> None:
    """Raise a ValueError that names a bad choice of dynamics for its update order, relaxation factor and state
    averaging.

    Args:
        dynamics: ``'explicit'`` (the closed-form drives) or ``'autograd'`` (the synchronous reference).
        update: the update order, ``'async'`` or ``'sync'``.
        omega: the relaxation factor.
        average_last: the steps the states are averaged over (0: none).
    """
    if dynamics not in ("explicit", "autograd"):
        raise ValueError(f"unknown dynamics {dynamics!r}: use 'explicit' or 'autograd'")
    if dynamics == "autograd" and (update != "sync" or omega != 1.0 or average_last):
        raise ValueError("autograd dynamics are the synchronous reference: use update='sync', omega=1 and "
                         "average_last=0 with them")


def run_phase(
    net: ConvergentNetwork,
    x: Tensor,
    x_drive: Tensor,
    state: NetworkState,
    steps: int,
    beta: float | Tensor = 0.0,
    y: Tensor | None = None,
    update: UpdateOrder = "async",
    dynamics: Dynamics = "explicit",
    tol: float | None = None,
    omega: float = 1.0,
    dither: torch.Generator | None = None,
    average_last: int = 0,
    trace: StepRecorder | None = None,
) -> Relaxation:
    """One phase of ``steps`` steps from ``state``, with the explicit dynamics (``relax``)
    or their autograd reference (``relax_autograd``), under the caller's autograd mode.

    Args:
        net: the network.
        x: the input batch (the autograd dynamics differentiate the energy at it).
        x_drive: the first layer's drive from ``x`` (``input_drive``).
        state: the state the phase starts from.
        steps: the most steps to run.
        beta: the nudge strength (0: free), or a tensor of one per sample.
        y: the labels (class indices), needed when nudged.
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        dynamics: ``'explicit'`` or ``'autograd'``.
        tol: stop once a step's largest state change is ``<= tol`` (explicit only; None: run all steps).
        omega: the relaxation factor, in (0, 2).
        dither: the generator of dithered Sigma-Delta rounding (None: round to nearest).
        average_last: also keep the states averaged over the last that many steps (explicit only).
        trace: a ``StepRecorder`` given every step (explicit only).
    """
    if dynamics == "autograd":
        if trace is not None:
            raise ValueError("a trace records the explicit dynamics: use dynamics='explicit' with it")
        return relax_autograd(net, x, state, steps, beta, y, dither)
    return relax(net, x_drive, state, steps, beta, y, update, tol, omega, trace=trace, dither=dither,
                 average_last=average_last)


def run_free_phase(
    net: ConvergentNetwork,
    x: Tensor,
    steps: int,
    update: UpdateOrder = "async",
    dynamics: Dynamics = "explicit",
    tol: float | None = None,
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    dither: torch.Generator | None = None,
    average_last: int = 0,
    *,
    trace: StepRecorder | None = None,
    grad: bool = False,
    truncate: int | None = None,
    x_drive: Tensor | None = None,
) -> Relaxation:
    """The free phase: ``beta = 0`` from ``start``, the spikes sent to reach the start state counted as the
    phase's. No argument checks (``free_phase`` is the checked entry point).

    Args:
        net: the network.
        x: the input batch.
        steps: the most steps to run (``t1``).
        update: ``'async'`` or ``'sync'``.
        dynamics: ``'explicit'`` or ``'autograd'``.
        tol: stop once a step's largest state change is ``<= tol`` (None: run all steps).
        start: the start state: a ``NetworkState``, ``'zeros'`` (None) or
            ``'feedforward'`` (one bottom-up sweep).
        omega: the relaxation factor, in (0, 2).
        dither: the generator of dithered Sigma-Delta rounding (the sweep's too).
        average_last: also keep the states averaged over the last that many steps.
        trace: records every step and, from ``'feedforward'``, the sweep (``record_start``); needs the explicit
            dynamics.
        grad: keep the autograd graph (BPTT: through the input drive, the sweep and every step); False runs
            without it, whatever the caller's mode.
        truncate: with ``grad``, the graph covers the last ``truncate`` steps only: the first ``steps - truncate``
            run without it and the rest from the state they reached, with an input drive of its own (truncated
            BPTT). None: all steps.
        x_drive: the input drive, when the caller computed it already (EP shares it with the nudged phases).
    """
    if truncate is not None and not grad:
        raise ValueError("truncate limits the autograd graph: use it with grad=True")
    if truncate is not None and truncate < steps:  # truncated BPTT: the first steps without the graph
        head = run_free_phase(net, x, steps - truncate, update, dynamics, tol, start, omega, dither, trace=trace,
                              x_drive=x_drive)
        x_drive = input_drive(net, x)  # with its graph: the drive's parameters get their gradient too
        tail = run_phase(net, x, x_drive, head.state.detach(), truncate, 0.0, None, update, dynamics, tol, omega,
                         dither, average_last, trace)
        spikes = [a + b for a, b in zip(head.spikes, tail.spikes, strict=True)]
        return Relaxation(tail.state, head.steps + tail.steps, tail.last_change, spikes, tail.mean_change, tail.mean_s)
    with torch.set_grad_enabled(grad):
        x_drive = input_drive(net, x) if x_drive is None else x_drive
        state, sent = start_state(net, x_drive, start, dither)
        if trace is not None and start == "feedforward":
            # sent from zero, the sweep's spike counts are r / threshold (a whole number each)
            trace.record_start(net, x.shape[0], [torch.round(r.detach() / b.neuron.threshold) if b.neuron.spiking
                                                 else None for r, b in zip(state.r, net.blocks, strict=True)])
        free = run_phase(net, x, x_drive, state, steps, 0.0, None, update, dynamics, tol, omega, dither, average_last,
                         trace)
    free.spikes = [a + b for a, b in zip(free.spikes, sent, strict=True)]
    return free


def free_phase(
    net: ConvergentNetwork,
    x: Tensor,
    t1: int,
    update: UpdateOrder = "async",
    dynamics: Dynamics = "explicit",
    tol: float | None = None,
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    dither: torch.Generator | None = None,
    average_last: int = 0,
    *,
    trace: StepRecorder | None = None,
) -> Relaxation:
    """Relax with ``beta = 0`` from ``start`` without an autograd graph (``run_free_phase`` after checking the
    arguments). A batch ``x`` of the wrong shape, or with NaN/inf, raises a ValueError that names the problem.

    Args:
        net: the network.
        x: the input batch, ``(B, *net.input_shape)``, finite floats.
        t1: the most steps to run (integer >= 1).
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        dynamics: ``'explicit'`` or ``'autograd'`` (the synchronous reference: ``update='sync'``, ``omega=1``).
        tol: stop once a step's largest state change is ``<= tol``, in state units (>= 0; None: run all ``t1``
            steps).
        start: the start state: a ``NetworkState``, ``'zeros'`` (None, the default)
            or ``'feedforward'`` (one bottom-up sweep, a warm start).
        omega: the relaxation factor, in (0, 2) (over-relaxation above 1).
        dither: the generator of dithered Sigma-Delta rounding (None: round to nearest).
        average_last: also return the states averaged over the last that many steps (``Relaxation.mean_s``; an
            integer in [0, t1], > 0 only with ``tol=None``).
        trace: a ``StepRecorder`` (e.g. ``lightning_ep.neuromorphic.StepTrace``) given
            every step, and the feed-forward sweep.
    """
    check_steps("t1", t1)
    net.check_input(x)
    check_dynamics(dynamics, update, omega, average_last)
    return run_free_phase(net, x, t1, update, dynamics, tol, start, omega, dither, average_last, trace=trace)
