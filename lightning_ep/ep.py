"""Equilibrium Propagation: a free phase, nudged phases at +beta and -beta, and a surrogate loss whose parameter
gradient is the EP estimate. The whole algorithm is in this file; the free phase it starts with is
``lightning_ep.phases``' (shared with BPTT and inference).

    free:    s0  = relax(F(., beta=0))        T1 steps from zero or from a feed-forward sweep (a warm start)
    nudge:   s+  = relax(F(., +beta))          T2 steps from s0
             s-  = relax(F(., -beta))          T2 steps from s0
    update:  dL/dtheta ~ (dF(s+, +beta)/dtheta - dF(s-, -beta)/dtheta) / (2 beta)

The surrogate ``(F(s+, +beta) - F(s-, -beta)) / (2 beta)`` at detached states has exactly that gradient, so a
plain ``backward()`` (or Lightning's ``manual_backward``) computes it, and any optimizer, gradient clipping and
DDP's all-reduce work unchanged. ``one_sided`` uses (s0, s+); ``random_sign`` uses (s0, s±) with the sign drawn
from a ``torch.Generator``.

Dithered Sigma-Delta (``dither``, a generator): the neurons round their spike counts stochastically, so what they
transmit is unbiased, and both nudged phases replay the same random stream from the free state (common random
numbers: the noise cancels in the difference). ``average_last`` evaluates the energy at the states averaged over
the last steps of each phase the estimate uses, which averages the remaining fluctuation out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_ep.dynamics import (
    DivergenceError,
    NetworkState,
    Relaxation,
    StartKind,
    UpdateOrder,
    check_average_last,
    input_drive,
)
from lightning_ep.network import ConvergentNetwork
from lightning_ep.phases import Dynamics, check_dynamics, check_steps, free_phase, run_free_phase, run_phase

__all__ = [  # the free phase and its checks live in lightning_ep.phases: importable from here too
    "ESTIMATORS",
    "Dynamics",
    "EPResult",
    "Estimator",
    "check_dynamics",
    "check_ep_args",
    "check_steps",
    "equilibrium_propagation",
    "free_phase",
]

Estimator = Literal["symmetric", "one_sided", "random_sign"]
ESTIMATORS = ("symmetric", "one_sided", "random_sign")


@dataclass
class EPResult:
    """``surrogate.backward()`` writes the EP gradient; the rest is for logging (all detached).

    Attributes:
        surrogate: the scalar ``mean((F(s_hi, b_hi) - F(s_lo, b_lo)) / (b_hi - b_lo))`` at detached states, whose
            parameter gradient is the EP estimate.
        logits: the free state's logits, ``(B, num_classes)`` (the prediction).
        loss: the batch's mean loss at the free state (a scalar).
        phases: the phases run, by name: ``'free'`` and ``'positive'`` and/or ``'negative'`` (the nudged ones).
        free_state: the free phase's end state (``phases['free'].state``).
    """

    surrogate: Tensor
    logits: Tensor
    loss: Tensor
    phases: dict[str, Relaxation]
    free_state: NetworkState


def check_ep_args(
    net: ConvergentNetwork, beta: float, t1: int, t2: int, estimator: str, average_last: int = 0,
    tol: float | None = None,
) -> None:
    """Raise a ValueError that names a bad EP setting (``average_last`` against the phases it averages: the
    nudged ones, and the free one too unless the estimator is symmetric)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}: use one of {ESTIMATORS}")
    if not (beta > 0.0 and beta < float("inf")):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if net.readout is None and estimator != "one_sided" and beta >= 1.0:
        raise ValueError(f"beta must be < 1 with the mse output and a -beta phase (1 - beta > 0), got {beta}")
    check_steps("t1", t1)
    check_steps("t2", t2)
    check_average_last(average_last, t2 if estimator == "symmetric" else min(t1, t2), tol)


def equilibrium_propagation(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    beta: float = 0.1,
    t1: int = 60,
    t2: int = 20,
    estimator: Estimator = "symmetric",
    update: UpdateOrder = "async",
    dynamics: Dynamics = "explicit",
    tol: float | None = None,
    generator: torch.Generator | None = None,
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    dither: torch.Generator | None = None,
    average_last: int = 0,
) -> EPResult:
    """Run the EP phases on a batch and return the surrogate whose parameter gradient is the EP estimate.

    Args:
        net: the network.
        x: the input batch, ``(B, *net.input_shape)``, finite floats (images scaled to [0, 1]).
        y: the labels, class indices in ``[0, num_classes)`` of any integer dtype.
        beta: the nudge strength, dimensionless (finite, > 0; < 1 with the mse output and a -beta phase, i.e. the
            symmetric and random-sign estimators; default 0.1).
        t1: the free phase's most steps (integer >= 1; default 60).
        t2: each nudged phase's most steps (integer >= 1; default 20).
        estimator: ``'symmetric'`` (+beta and -beta), ``'one_sided'`` (free and +beta) or ``'random_sign'``
            (free and a +-beta drawn from ``generator``).
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        dynamics: ``'explicit'`` or ``'autograd'`` (the synchronous reference).
        tol: end a phase once a step's largest state change is ``<= tol``, in state units (>= 0; None: run all
            steps).
        generator: a CPU generator that draws the sign of ``'random_sign'`` (None: the global one).
        start: the free phase's start state: a state, ``'zeros'`` (None) or ``'feedforward'`` (a sweep).
        omega: the relaxation factor, in (0, 2) (default 1).
        dither: the generator of dithered Sigma-Delta (every phase; both nudged phases replay the same stream), on
            the network's device (None: round to nearest).
        average_last: evaluate the energy at the states averaged over the last that many steps of each phase the
            estimate uses (the free phase too with the one-sided and random-sign estimators); an integer from 0
            (default: none) to the shortest such phase's steps, > 0 only with ``tol=None``.

    Raises:
        ValueError: a bad setting or batch (each message names it).
        DivergenceError: a state or the surrogate became NaN or inf.
    """
    check_ep_args(net, beta, t1, t2, estimator, average_last, tol)
    net.check_input(x, y)
    check_dynamics(dynamics, update, omega, average_last)
    y = y.long()  # one_hot and cross_entropy take int64 only (no copy when y is int64 already)
    phases: dict[str, Relaxation] = {}
    with torch.no_grad():
        x_drive = input_drive(net, x)
        free_average = 0 if estimator == "symmetric" else average_last
        phases["free"] = free = run_free_phase(net, x, t1, update, dynamics, tol, start, omega, dither, free_average,
                                               x_drive=x_drive)
        if estimator == "random_sign":
            sign = 1.0 if torch.rand((), generator=generator) < 0.5 else -1.0
            betas = (sign * beta,)
        else:
            betas = (beta, -beta) if estimator == "symmetric" else (beta,)
        stream = dither.get_state() if dither is not None else None
        for b in betas:
            if dither is not None:
                dither.set_state(stream)  # common random numbers: each nudged phase sees the same noise
            phases["positive" if b > 0 else "negative"] = run_phase(net, x, x_drive, free.state, t2, b, y, update,
                                                                    dynamics, tol, omega, dither, average_last)
    if estimator == "symmetric":
        hi, lo, b_hi, b_lo = phases["positive"].estimate_s, phases["negative"].estimate_s, beta, -beta
    else:
        hi, lo = phases["positive" if betas[0] > 0 else "negative"].estimate_s, free.estimate_s
        b_hi, b_lo = betas[0], 0.0
    f_hi = net.total_energy(x, [s.detach() for s in hi], y, b_hi)
    f_lo = net.total_energy(x, [s.detach() for s in lo], y, b_lo)
    surrogate = ((f_hi - f_lo) / (b_hi - b_lo)).mean()
    if not torch.isfinite(surrogate):
        raise DivergenceError(
            f"the EP surrogate is {surrogate.item()} (energy of the nudged states {f_hi.mean().item()}, of the other "
            f"{f_lo.mean().item()}): a parameter is probably inf/NaN. Lower the learning rate or beta, or clip."
        )
    with torch.no_grad():
        logits = net.logits(free.state.s)
        loss = net.loss(free.state.s, y).mean()
    return EPResult(surrogate, logits, loss, phases, free.state)

