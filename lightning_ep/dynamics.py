"""Relaxation of a convergent network towards a minimum of ``F = E + beta * loss``.

Every update sets a layer to ``clamp(-dF/ds + s, 0, 1)``, written out in closed form from the energy in
``lightning_ep.network`` (forward drive from below, feedback through the transposed synapses from above), and
computed from what the neighbours *transmit* (their Sigma-Delta reconstructions). ``update='async'`` updates
layers 1, 3, ... and then 2, 4, ...: with average pooling this is exact block-coordinate descent of ``F`` and it
settles; ``'sync'`` updates all layers at once from the previous step, as the reference implementations do.
``relax_autograd`` is that reference: the same synchronous step, its drives taken by autograd of the energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # the network imports the free phase, which imports this module
    from lightning_ep.network import ConvergentNetwork

UpdateOrder = Literal["async", "sync"]
StartKind = Literal["zeros", "feedforward"]
START_KINDS = ("zeros", "feedforward")


class DivergenceError(RuntimeError):
    """The dynamics produced NaN or inf states."""


class StepRecorder(Protocol):
    """An opt-in observer of ``relax`` (e.g. ``lightning_ep.neuromorphic.StepTrace``): ``record_step`` is called
    once at the end of every step with the states after it and the signed spike counts each layer sent in it
    (``None`` for a layer that does not spike); ``record_start``, by the free phase
    (``run_free_phase``), with the counts of the feed-forward sweep that reached its start
    state. It must not modify them."""

    def record_step(self, net: ConvergentNetwork, s: Sequence[Tensor], sent: Sequence[Tensor | None]) -> None: ...

    def record_start(self, net: ConvergentNetwork, batch: int, sent: Sequence[Tensor | None]) -> None: ...


@dataclass
class NetworkState:
    """States ``s`` and what each layer transmits ``r`` (``r is s`` when not spiking).

    Attributes:
        s: the states, one ``(B, *shape)`` tensor per layer (``net.state_shapes``, input side first), in [0, 1].
        r: what each layer transmits: its Sigma-Delta reconstruction of ``s`` (same shapes; the tensors of ``s``
            themselves when not spiking).
    """

    s: list[Tensor]
    r: list[Tensor]

    @staticmethod
    def zeros(net: ConvergentNetwork, batch: int) -> NetworkState:
        """The all-zero state (``net.zero_states``), with ``r`` holding the same tensors as ``s``.

        Args:
            net: the network whose layer shapes, device and dtype the state takes.
            batch: the number of samples (integer >= 0).
        """
        s = net.zero_states(batch)
        return NetworkState(s, list(s))

    def detach(self) -> NetworkState:
        return NetworkState([t.detach() for t in self.s], [t.detach() for t in self.r])


@dataclass
class Relaxation:
    """The end of a phase: the state, the steps run, the last step's largest state change, the spikes sent per
    layer (summed over the batch and the steps; zeros when not spiking) and the last step's mean absolute state
    change over all neurons of the batch (the largest is set by a few slow neurons; this says how many move).
    ``mean_s``: the states averaged over the phase's last ``average_last`` steps (``None`` when not asked for).

    Attributes:
        state: the state the phase ended in.
        steps: the steps run (integer; fewer than asked for when ``tol`` stopped the phase early).
        last_change: the last step's largest absolute state change, in state units.
        spikes: per layer, a 0-dim tensor counting the spikes sent (absolute counts, summed over the neurons, the
            batch and the steps; zero when not spiking).
        mean_change: the last step's mean absolute state change over all neurons of the batch, in state units
            (default NaN: not measured).
        mean_s: the states averaged over the last ``average_last`` steps, one ``(B, *shape)`` tensor per layer,
            detached (default None: not asked for).
    """

    state: NetworkState
    steps: int
    last_change: float
    spikes: list[Tensor] = field(default_factory=list)
    mean_change: float = float("nan")
    mean_s: list[Tensor] | None = None

    @property
    def estimate_s(self) -> list[Tensor]:
        """The states EP evaluates the energy at: the average over the last steps when kept, else the last."""
        return self.mean_s if self.mean_s is not None else self.state.s


class _IndexCache:
    """Max-pooling indices of each block's last forward drive, kept with the tensor they were computed from."""

    def __init__(self, n: int) -> None:
        self.entries: list[tuple[Tensor, Tensor] | None] = [None] * n

    def store(self, i: int, src: Tensor, indices: Tensor | None) -> None:
        if indices is not None:
            self.entries[i] = (src, indices)

    def lookup(self, net: ConvergentNetwork, i: int, src: Tensor) -> Tensor | None:
        block = net.blocks[i]
        if getattr(block, "pooling", None) != "max":
            return None
        entry = self.entries[i]
        if entry is None or entry[0] is not src:
            _, idx = block.forward_drive(src)
            self.entries[i] = (src, idx)
            return idx
        return entry[1]


def input_drive(net: ConvergentNetwork, x: Tensor) -> Tensor:
    """The first layer's drive from the input: fixed during all phases, so computed once a batch."""
    return net.blocks[0].forward_drive(x)[0]


def feedforward_state(
    net: ConvergentNetwork, x_drive: Tensor, dither: torch.Generator | None = None
) -> tuple[NetworkState, list[Tensor]]:
    """One bottom-up sweep, each layer set to ``clamp(forward drive from the layer below)`` with no feedback:
    a warm start for the free phase that costs about one dynamics step. Also returns the spikes each layer sent
    (from zero) to reach it. ``dither``: the Sigma-Delta dithering generator (see ``relax``)."""
    s: list[Tensor] = []
    r: list[Tensor] = []
    sent: list[Tensor] = []
    for i, block in enumerate(net.blocks):
        d = x_drive if i == 0 else block.forward_drive(r[i - 1])[0]
        s.append(d.clamp(0.0, 1.0))
        r_i, spikes = block.neuron(s[i], None, dither)
        r.append(r_i)
        sent.append(x_drive.new_zeros(()) if spikes is None else torch.linalg.vector_norm(spikes.detach(), 1))
    return NetworkState(s, r), sent


def check_omega(omega: float) -> None:
    """Raise a ValueError unless the relaxation factor lies in (0, 2)."""
    if not 0.0 < omega < 2.0:
        raise ValueError(f"omega (the relaxation factor) must lie in (0, 2), got {omega}")


def start_state(
    net: ConvergentNetwork, x_drive: Tensor, start: NetworkState | StartKind | None,
    dither: torch.Generator | None = None,
) -> tuple[NetworkState, list[Tensor]]:
    """The state a free phase starts from and the spikes sent to reach it (the feed-forward sweep sends each
    layer's reconstruction from zero; zeros otherwise).

    Args:
        net: the network.
        x_drive: the first layer's drive from the input (``input_drive``).
        start: a state (used as it is), ``'zeros'`` (or None) or ``'feedforward'`` (``feedforward_state``).
        dither: the generator of dithered Sigma-Delta rounding for the sweep (None: round to nearest).
    """
    if start == "feedforward":
        return feedforward_state(net, x_drive, dither)
    if isinstance(start, NetworkState):
        state = start
    elif start is None or start == "zeros":
        state = NetworkState.zeros(net, x_drive.shape[0])
    else:
        raise ValueError(f"unknown start state {start!r}: use one of {START_KINDS} or a NetworkState")
    return state, [x_drive.new_zeros(()) for _ in net.blocks]


def _forward_drive(net: ConvergentNetwork, i: int, x_drive: Tensor, r: list[Tensor], cache: _IndexCache) -> Tensor:
    """The drive of layer i from layer i-1 (its max-pooling indices are kept for layer i-1's feedback)."""
    if i == 0:
        return x_drive
    d, idx = net.blocks[i].forward_drive(r[i - 1])
    cache.store(i, r[i - 1], idx)
    return d


def _feedback(net: ConvergentNetwork, i: int, r: list[Tensor], cache: _IndexCache) -> Tensor | None:
    """The drive of layer i from layer i+1 through the transposed synapses (None for the last layer)."""
    if i + 1 >= len(r):
        return None
    return net.blocks[i + 1].feedback(r[i + 1], cache.lookup(net, i + 1, r[i]))


def _drive(net: ConvergentNetwork, i: int, x_drive: Tensor, r: list[Tensor], cache: _IndexCache) -> Tensor:
    """``-dE/ds_i + s_i``: forward drive from layer i-1 plus feedback from layer i+1."""
    d = _forward_drive(net, i, x_drive, r, cache)
    fb = _feedback(net, i, r, cache)
    return d if fb is None else d + fb


def _nudged(
    net: ConvergentNetwork, d: Tensor, s_last: Tensor, beta: float | Tensor, target: Tensor, exact: bool
) -> Tensor:
    """Add the nudge ``-beta dloss/ds_L`` to the last layer's drive. For mse and ``exact``, the closed-form
    minimiser ``(d + beta target) / (1 + beta)`` (the same fixed point as the prototypical
    ``d + beta (target - s)``)."""
    if net.readout is None:
        return (d + beta * target) / (1.0 + beta) if exact else d + beta * (target - s_last)
    p = F.softmax(net.readout(s_last.flatten(1)), dim=1)
    return d + beta * ((target - p) @ net.readout.weight).view_as(d)


def relax(
    net: ConvergentNetwork,
    x_drive: Tensor,
    state: NetworkState,
    steps: int,
    beta: float | Tensor = 0.0,
    y: Tensor | None = None,
    update: UpdateOrder = "async",
    tol: float | None = None,
    omega: float = 1.0,
    trace: StepRecorder | None = None,
    dither: torch.Generator | None = None,
    average_last: int = 0,
) -> Relaxation:
    """Run up to ``steps`` steps of the explicit dynamics from ``state``; stops early once the largest state
    change of a step is ``<= tol`` (when given). ``omega`` is the relaxation factor: each update moves a layer to
    ``clamp(s + omega (d - s))`` for its drive ``d`` (1: ``clamp(d)``; in (1, 2): over-relaxation, which can
    settle in fewer steps where layers are strongly coupled). Every omega has the same fixed points; where the
    energy has several, which one is reached may differ. ``trace`` (off by default): a ``StepRecorder``
    given every step's states and spikes (for per-step spike rasters and latency). ``dither``: a generator that
    makes the Sigma-Delta neurons round their graded spike counts stochastically (unbiased transmission; the
    states then fluctuate around the fixed point by about a threshold). ``average_last``: also return the states
    averaged over the last that many steps (``Relaxation.mean_s``), which averages that fluctuation out; it needs
    ``tol=None`` (a phase cut early would have no such window). ``beta``: one nudge strength, or a tensor of one
    per sample (shape ``(batch,)``). Differentiable (BPTT) when run with autograd enabled.

    Args:
        net: the network.
        x_drive: the first layer's drive from the input (``input_drive``), fixed during the phase.
        state: the start state (states in [0, 1], dimensionless; e.g. ``NetworkState.zeros`` or a free phase's).
        steps: the most steps to run (integer >= 1); one step updates every layer once.
        beta: the nudge strength (0, default: a free phase; > 0 pulls towards ``y``, < 0 pushes away), a float or
            a ``(batch,)`` tensor; with the mse output ``|beta| < 1`` keeps the output update a contraction.
        y: the labels, class indices in ``[0, num_classes)`` (needed when ``beta != 0``).
        update: ``'async'`` (even-indexed layers, then odd; default) or ``'sync'`` (all at once).
        tol: stop once a step's largest state change is ``<= tol``, in state units (>= 0; None: run all steps).
        omega: the relaxation factor, in (0, 2) (default 1).
        trace: a ``StepRecorder`` given every step (None: no trace).
        dither: the generator of dithered Sigma-Delta rounding (None: round to nearest; needs ``graded``).
        average_last: also return the states averaged over the last that many steps (integer in [0, steps];
            0 default: none; > 0 needs ``tol=None``).

    Raises:
        ValueError: a bad argument (``steps < 1``, an unknown ``update``, ``beta != 0`` without ``y``, ...).
        DivergenceError: a state became NaN or inf.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if update not in ("async", "sync"):
        raise ValueError(f"unknown update order {update!r}: use 'async' or 'sync'")
    nudging = isinstance(beta, Tensor) or beta != 0.0
    if nudging and y is None:
        raise ValueError("a nudged phase (beta != 0) needs the labels y")
    if isinstance(beta, Tensor):
        if beta.shape != (x_drive.shape[0],):
            raise ValueError(f"a per-sample beta needs shape (batch,) = ({x_drive.shape[0]},), got {tuple(beta.shape)}")
        beta = beta.to(x_drive).view(-1, *[1] * len(net.state_shapes[-1]))  # broadcasts over the last layer
    check_omega(omega)
    check_average_last(average_last, steps, tol)
    n = len(state.s)
    target = net.targets(y, x_drive.dtype) if nudging else x_drive
    groups = [list(range(0, n, 2)), list(range(1, n, 2))] if update == "async" else [list(range(n))]
    s, r = list(state.s), list(state.r)
    spikes = [torch.zeros((), device=x_drive.device, dtype=x_drive.dtype) for _ in range(n)]
    cache = _IndexCache(n)
    in_place = not torch.is_grad_enabled()  # without autograd, fresh tensors may be updated in place
    change, mean_change, t = float("inf"), float("inf"), 0
    mean_s: list[Tensor] | None = None
    for t in range(1, steps + 1):
        measure = tol is not None or t == steps
        step_change = x_drive.new_zeros(()) if measure else None
        total_change = x_drive.new_zeros(()) if measure else None
        step_sent: list[Tensor | None] | None = [None] * n if trace is not None else None
        for group in groups:
            # All forward drives first: they hold the max-pooling indices the feedbacks need (sync updates).
            forward = {i: _forward_drive(net, i, x_drive, r, cache) for i in group}
            new = {}
            for i in group:
                fb = _feedback(net, i, r, cache)
                if fb is None:
                    d = forward[i]
                elif in_place:
                    d = fb.add_(forward[i])  # fb is a fresh tensor; forward[0] is the input drive, kept intact
                else:
                    d = forward[i] + fb
                if i == n - 1 and nudging:
                    d = _nudged(net, d, s[i], beta, target, exact=update == "async")
                if omega != 1.0:
                    d = torch.lerp(s[i], d, omega)
                new[i] = d.clamp_(0.0, 1.0) if in_place and d is not x_drive else d.clamp(0.0, 1.0)
            for i, s_new in new.items():
                if measure:
                    delta = (s_new.detach() - s[i].detach()).abs_()
                    step_change = torch.maximum(step_change, delta.max())
                    total_change = total_change + delta.sum()
                s[i] = s_new
                r[i], sent = net.blocks[i].neuron(s_new, r[i], dither)
                if sent is not None:
                    spikes[i] = spikes[i] + torch.linalg.vector_norm(sent.detach(), 1)
                if step_sent is not None:
                    step_sent[i] = sent
        if average_last and t > steps - average_last:
            if mean_s is None:
                mean_s = [t_.detach().clone() for t_ in s]
            else:
                for acc, t_ in zip(mean_s, s, strict=True):
                    acc.add_(t_.detach())
        if trace is not None:
            trace.record_step(net, s, step_sent)
        if measure:
            change, mean_change = float(step_change), float(total_change) / sum(t_.numel() for t_ in s)
            if tol is not None and change <= tol:
                break
    _check_finite(s, change)
    if mean_s is not None:
        mean_s = [acc.div_(average_last) for acc in mean_s]
    return Relaxation(NetworkState(s, r), t, change, spikes, mean_change, mean_s)


def check_average_last(average_last: int, steps: int, tol: float | None) -> None:
    """Raise a ValueError unless ``average_last`` (steps to average the states over) is in [0, steps] and, when
    positive, ``tol`` is None."""
    if not isinstance(average_last, int) or isinstance(average_last, bool) or not 0 <= average_last <= steps:
        raise ValueError(f"average_last (steps to average the states over) must be an integer in [0, {steps}] "
                         f"(the phase's steps), got {average_last!r}")
    if average_last and tol is not None:
        raise ValueError("average_last needs tol=None: a phase stopped early by tol has no last-steps window to "
                         "average over")


def relax_autograd(
    net: ConvergentNetwork,
    x: Tensor,
    state: NetworkState,
    steps: int,
    beta: float = 0.0,
    y: Tensor | None = None,
    dither: torch.Generator | None = None,
) -> Relaxation:
    """The reference implementations' dynamics: synchronous steps ``s <- clamp(dPhi/ds)``, where
    ``Phi = -(E - 1/2|s|^2) - beta * loss`` and its gradient is taken by autograd at every step. ``dither``: as
    in ``relax``.

    Args:
        net: the network.
        x: the input batch, ``(B, *net.input_shape)``.
        state: the start state (states in [0, 1], dimensionless).
        steps: the steps to run (integer >= 1; no early stop).
        beta: the nudge strength (float; 0, default: a free phase), as in ``relax``.
        y: the labels, class indices in ``[0, num_classes)`` (needed when ``beta != 0``).
        dither: the generator of dithered Sigma-Delta rounding (None: round to nearest).

    Raises:
        ValueError: ``steps < 1``.
        DivergenceError: a state became NaN or inf.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s, r = list(state.s), list(state.r)
    n = len(s)
    spikes = [torch.zeros((), device=x.device, dtype=x.dtype) for _ in range(n)]
    change = mean_change = float("inf")
    for t in range(1, steps + 1):
        with torch.enable_grad():
            r_leaf = [t_.detach().requires_grad_() for t_ in r]
            s_last = s[-1].detach().requires_grad_()
            inputs = [x, *r_leaf[:-1]]
            phi = sum(b.coupling(u, v).sum() for b, u, v in zip(net.blocks, inputs, r_leaf, strict=True))
            grads = torch.autograd.grad(phi, r_leaf)
            drives = list(grads)
            if beta != 0.0:
                assert y is not None
                (g_loss,) = torch.autograd.grad(-beta * net.loss([*s[:-1], s_last], y).sum(), s_last)
                drives[-1] = drives[-1] + g_loss
        new_s = [d.clamp(0.0, 1.0) for d in drives]
        if t == steps:
            change = max(float((a - b).abs().max()) for a, b in zip(new_s, s, strict=True))
            mean_change = sum(float((a - b).abs().sum()) for a, b in zip(new_s, s, strict=True)) / sum(
                a.numel() for a in new_s)
        s = new_s
        for i in range(n):
            r[i], sent = net.blocks[i].neuron(s[i], r[i], dither)
            if sent is not None:
                spikes[i] = spikes[i] + sent.abs().sum()
    _check_finite(s, change)
    return Relaxation(NetworkState(s, r), steps, change, spikes, mean_change)


def _check_finite(s: list[Tensor], change: float) -> None:
    for i, t in enumerate(s):
        if not torch.isfinite(t).all():
            raise DivergenceError(
                f"the dynamics diverged: layer {i + 1}'s state holds NaN/inf (last change {change}). "
                "Lower the learning rate or beta, check the input for NaN/inf, or clip the gradients."
            )
