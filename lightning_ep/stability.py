"""Is a state a minimum of the energy? The curvature of ``E`` over the units that are free to move.

With average pooling (or none) ``E`` is quadratic in the states: its Hessian is ``I - A``, where ``A`` is the
symmetric coupling of adjacent layers (the forward drives' linear part and its adjoint, the feedback). A unit
clamped at 0 or 1 cannot move inwards in the relaxation, so what decides whether a state is a stable minimum is
``A`` restricted to the *active* units (``0 < s < 1``): the state is a strict local minimum in those directions,
and block-coordinate descent settles there, iff the largest eigenvalue of that restriction is below 1. Above 1 the
energy curves downwards along some direction of active units: without spikes the relaxation leaves such a point;
with spikes the quantisation can hold it there, and EP's nudged phases then respond to a saddle, not a minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_ep.network import ConvergentNetwork

CURVATURE_SAMPLES = 8  # training samples a batch whose free state's curvature is penalised (curvature_bound)
"""Training samples per batch (the first ones) whose free state's curvature the curvature penalty measures."""


def _coupling(net: ConvergentNetwork, v: Sequence[Tensor], offsets: Sequence[Tensor | None]) -> list[Tensor]:
    """``A v``: each layer gets the linear part of its forward drive from the layer below (not from the input,
    which is fixed) plus the feedback from the layer above."""
    n = len(v)
    out = []
    for i in range(n):
        a = torch.zeros_like(v[i]) if i == 0 else net.blocks[i].forward_drive(v[i - 1])[0] - offsets[i]
        if i + 1 < n:
            a = a + net.blocks[i + 1].feedback(v[i + 1], None)
        out.append(a)
    return out


@dataclass
class ActiveEigenpair:
    """Per sample, the largest eigenvalue of the coupling over the active units and its unit eigenvector (one
    tensor per layer, zero outside the active units; detached)."""

    values: Tensor
    vectors: list[Tensor]


def check_quadratic(net: ConvergentNetwork) -> None:
    """Raise a ValueError unless every conv layer pools by average or not at all (the energy is then quadratic).

    Args:
        net: the network to check.
    """
    for block in net.blocks:
        if getattr(block, "pooling", None) == "max":
            raise ValueError("the energy's curvature is defined here for average pooling or none: max pooling makes "
                             "the forward drive piecewise linear in the states, with pieces that change with them")


def _per_sample(t: Tensor, v: Tensor) -> Tensor:
    """``v`` (one value per sample) shaped to broadcast against ``t``."""
    return v.view(-1, *[1] * (t.dim() - 1))


def _norms(v: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in v))


def _start(s: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """Power iteration's start on a layer: uniform noise from ``generator`` on the active units, or their ones."""
    if generator is None:
        return mask.clone()
    return torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype).mul_(mask)


def active_eigenpair(
    net: ConvergentNetwork, states: Sequence[Tensor], iters: int = 100, generator: torch.Generator | None = None,
) -> ActiveEigenpair:
    """Per sample, the largest eigenvalue of the coupling ``A`` restricted to the units with ``0 < s < 1``, and its
    eigenvector: power iteration on ``A^2`` (``iters`` rounds from a random start drawn from ``generator``, or
    without one from ones on the active units).
    Adjacent layers only are coupled, so ``A`` pairs the even layers with the odd ones: its spectrum is symmetric
    about 0, and the even and odd parts of ``A^2``'s top eigenvector, each normalised and signed to agree, give
    ``A``'s. Below 1: ``states`` is a strict local minimum of the energy over its active units; at or above 1, not.
    0 for a sample with no active unit. Needs average pooling or none.

    Args:
        net: the network (average pooling or none).
        states: a state of the network, one ``(B, *shape)`` tensor per layer (e.g. a free phase's ``state.s``).
        iters: power-iteration rounds (integer >= 1; default 100); fewer rounds estimate the eigenvalue from below.
        generator: draws the random start on the states' device (None: start from ones on the active units).

    Raises:
        ValueError: max pooling, or ``iters < 1``.
    """
    check_quadratic(net)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    with torch.no_grad():
        masks = [((s > 0) & (s < 1)).to(s.dtype) for s in states]
        # the bias part of each forward drive from a layer (none for the first layer's: its input is fixed)
        offsets = [None, *(block.forward_drive(torch.zeros_like(s))[0]
                           for block, s in zip(net.blocks[1:], states[:-1], strict=True))]

        def apply(v: list[Tensor]) -> list[Tensor]:
            return [a * m for a, m in zip(_coupling(net, v, offsets), masks, strict=True)]

        tiny = torch.finfo(states[0].dtype).tiny
        v = [_start(s, m, generator) for s, m in zip(states, masks, strict=True)]
        for _ in range(iters):
            nv = _norms(v).clamp_min(tiny)
            v = apply(apply([t / _per_sample(t, nv) for t in v]))
        even, odd = _norms(v[0::2]).clamp_min(tiny), _norms(v[1::2]).clamp_min(tiny)
        u = [t / _per_sample(t, even if i % 2 == 0 else odd) for i, t in enumerate(v)]
        quotient = sum((a * b).flatten(1).sum(1) for a, b in zip(u, apply(u), strict=True)) / 2
        sign = torch.where(quotient < 0, -1.0, 1.0).to(states[0].dtype)
        u = [(t if i % 2 == 0 else t * _per_sample(t, sign)) / 2**0.5 for i, t in enumerate(u)]
        return ActiveEigenpair(quotient.abs(), u)


def active_coupling_eigenvalue(
    net: ConvergentNetwork, states: Sequence[Tensor], iters: int = 100, generator: torch.Generator | None = None,
) -> Tensor:
    """Per sample, the largest eigenvalue of the coupling over the active units (see ``active_eigenpair``).

    Below 1 the state is a strict local minimum of the energy over its active units (``0 < s < 1``); at or above 1,
    not. Needs average pooling or none.

    Args:
        net: the network (average pooling or none).
        states: a state of the network, one ``(B, *shape)`` tensor per layer (e.g. a free phase's ``state.s``).
        iters: power-iteration rounds (integer >= 1; default 100); fewer rounds estimate the eigenvalue from below.
        generator: draws the random start on the states' device (None: start from ones on the active units).

    Returns:
        Per sample, the eigenvalue (dimensionless, >= 0; 0 for a sample with no active unit), shape ``(B,)``.

    Raises:
        ValueError: max pooling, or ``iters < 1``.
    """
    return active_eigenpair(net, states, iters, generator).values


def coupling_quadratic_form(net: ConvergentNetwork, u: Sequence[Tensor]) -> Tensor:
    """Per sample ``u^T A u`` with autograd through the weights: twice the bias-free coupling of adjacent layers. At a
    unit top eigenvector ``u`` its gradient in the weights is the eigenvalue's (Hellmann-Feynman).

    Args:
        net: the network (average pooling or none).
        u: a direction in state space, one ``(B, *shape)`` tensor per layer (e.g. ``active_eigenpair``'s
            ``vectors``).
    """
    total = u[0].new_zeros(u[0].shape[0])
    for i in range(1, len(u)):
        block = net.blocks[i]
        linear = block.forward_drive(u[i - 1])[0] - block.forward_drive(torch.zeros_like(u[i - 1]))[0]
        total = total + 2 * (u[i] * linear).flatten(1).sum(1)
    return total


def curvature_penalty(
    net: ConvergentNetwork, states: Sequence[Tensor], bound: float, iters: int = 30,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A penalty on the samples whose largest active eigenvalue exceeds ``bound``: its value is the mean over the
    samples of ``max(0, eigenvalue - bound)`` and its gradient in the weights that of the eigenvalues above the bound
    (through ``coupling_quadratic_form`` at their eigenvectors), which lowers the coupling along those
    directions only. ``iters`` power-iteration rounds (as ``CurvatureConfig(iters=...)``; few rounds
    estimate the eigenvalue from below, so the penalty then acts on fewer samples). Returns the penalty and the
    eigenvalues (detached).

    Args:
        net: the network (average pooling or none).
        states: a state of the network, one ``(B, *shape)`` tensor per layer (detached here).
        bound: the eigenvalue above which a sample is penalised (dimensionless, > 0; below 1 keeps the state a
            strict local minimum, e.g. ``CurvatureConfig(bound=0.9)``).
        iters: power-iteration rounds (integer >= 1; default 30).
        generator: draws the random start on the states' device (None: start from ones on the active units).

    Raises:
        ValueError: max pooling, or ``iters < 1``.
    """
    pair = active_eigenpair(net, [s.detach() for s in states], iters, generator)
    above = (pair.values > bound).to(pair.values.dtype)
    form = coupling_quadratic_form(net, pair.vectors)
    # value: the hinge; gradient: that of the eigenvalues above the bound (form equals the eigenvalue in value)
    penalty = (above * (form - form.detach() + pair.values - bound)).mean()
    return penalty, pair.values
