"""Per-step traces: ``StepTrace`` records a relaxation step by step (exact per-neuron SynOps, the prediction after
every step, spike rasters), ``trace_cost`` turns it into a ``NeuromorphicCost``
with latency, and the traced runners run a free or nudged phase with one on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_ep.dynamics import NetworkState, Relaxation, StartKind, UpdateOrder, input_drive
from lightning_ep.neuromorphic.cost import NeuromorphicCost
from lightning_ep.neuromorphic.latency import latency_steps
from lightning_ep.neuromorphic.synapses import fan_out, input_macs, phase_dense_macs, readout_macs
from lightning_ep.phases import free_phase, run_phase

if TYPE_CHECKING:
    from lightning_ep.network import ConvergentNetwork

COUNTS = ("spikes", "synops", "events", "event_synops")
"""The per-sample, per-layer quantities a ``StepTrace`` counts each step, in the order of its ``counts`` last axis."""


class StepTrace:
    """Records a relaxation step by step: ``relax(..., trace=StepTrace())`` (or ``traced_free_phase``).

    Per step: each sample's spikes, SynOps, events and event SynOps per layer (float64, exact per-neuron fan-outs),
    the prediction (argmax of ``net.logits``) and, for the first ``raster_samples`` samples, every neuron's signed
    spike count. ``start``: the same for the feed-forward sweep, when the phase started from it (set by the free
    phase: ``traced_free_phase``, or ``free_phase(..., trace=...)``).
    Tensors stay on the network's device; the trace keeps no reference to the network's states.

    Args:
        raster_samples: keep every neuron's signed spike counts of this many first samples (integer >= 0;
            default 0: no raster).

    Raises:
        ValueError: ``raster_samples`` not an integer >= 0.
    """

    def __init__(self, raster_samples: int = 0) -> None:
        if isinstance(raster_samples, bool) or not isinstance(raster_samples, int) or raster_samples < 0:
            raise ValueError(f"raster_samples must be an integer >= 0, got {raster_samples!r}")
        self.raster_samples = raster_samples
        self.counts: list[Tensor] = []  # per step: (batch, layers, COUNTS)
        self.predictions: list[Tensor] = []  # per step: (batch,)
        self.raster: list[list[Tensor]] = []  # per step, per layer: (raster_samples, neurons)
        self.start: tuple[Tensor, list[Tensor]] | None = None  # the sweep's counts and raster
        self._maps: list[Tensor] | None = None

    @property
    def steps(self) -> int:
        return len(self.predictions)

    @property
    def swept(self) -> bool:
        """Whether the phase started from a recorded feed-forward sweep."""
        return self.start is not None

    def record_step(self, net: ConvergentNetwork, s: Sequence[Tensor], sent: Sequence[Tensor | None]) -> None:
        """Called by ``relax`` at the end of every step.

        Args:
            net: the network being relaxed.
            s: per state layer, the states after the step, ``(B, *net.state_shapes[l])``.
            sent: per state layer, the signed spike counts it sent in the step (the state's shape), or None for a
                layer that does not spike.
        """
        counts, raster = self._count(net, s[0].shape[0], sent)
        self.counts.append(counts)
        self.raster.append(raster)
        with torch.no_grad():
            self.predictions.append(net.logits([t.detach() for t in s]).argmax(1))

    def record_start(self, net: ConvergentNetwork, batch: int, sent: Sequence[Tensor | None]) -> None:
        """Record the feed-forward sweep's spikes (sent from zero); called by the free phase.

        Args:
            net: the network being relaxed.
            batch: samples of the batch (integer >= 1).
            sent: per state layer, the signed spike counts the sweep sent (the state's shape, ``(B, ...)``), or
                None for a layer that does not spike.
        """
        self.start = self._count(net, batch, sent)

    def _count(self, net: ConvergentNetwork, batch: int, sent: Sequence[Tensor | None]) -> tuple[Tensor, list[Tensor]]:
        p = next(net.parameters())
        if self._maps is None:
            self._maps = [m.flatten().to(p.device) for m in fan_out(net)]
        counts = torch.zeros(batch, len(sent), len(COUNTS), dtype=torch.float64, device=p.device)
        raster = []
        for layer, (q, fan) in enumerate(zip(sent, self._maps, strict=True)):
            n = self.raster_samples
            if q is None:
                raster.append(torch.zeros(min(n, batch), fan.numel(), device=p.device))
                continue
            magnitude = q.detach().flatten(1).abs().double()
            events = (magnitude > 0).double()
            counts[:, layer] = torch.stack([magnitude.sum(1), magnitude @ fan, events.sum(1), events @ fan], 1)
            raster.append(q.detach()[:n].flatten(1).float().clone())
        return counts, raster

    def counts_per_step(self, kind: str) -> Tensor:
        """(steps, batch, layers): ``kind`` (one of ``COUNTS``: spikes, synops, events, event_synops) of each step
        (the sweep excluded).

        Args:
            kind: which count: ``'spikes'``, ``'synops'``, ``'events'`` or ``'event_synops'`` (else a ValueError).
        """
        if kind not in COUNTS:
            raise ValueError(f"unknown count {kind!r}: use one of {COUNTS}")
        if not self.counts:
            return torch.zeros(0, 0, 0, dtype=torch.float64)
        return torch.stack(self.counts)[..., COUNTS.index(kind)]

    def spikes_per_step(self) -> Tensor:
        """(steps, batch, layers) spikes sent in each step (the sweep excluded)."""
        return self.counts_per_step("spikes")

    def predictions_per_step(self) -> Tensor:
        """(steps, batch) prediction after each step."""
        return torch.stack(self.predictions) if self.predictions else torch.zeros(0, 0, dtype=torch.long)

    def raster_of(self, sample: int = 0) -> list[Tensor]:
        """Per layer, (rows, neurons) signed spike counts of one of the first ``raster_samples`` samples: the sweep
        first (when recorded), then one row a step.

        Args:
            sample: the sample's index in the batch (integer in ``[0, raster_samples)``, else a ValueError;
                default 0).
        """
        if not 0 <= sample < self.raster_samples:
            raise ValueError(f"sample {sample} was not recorded: the trace keeps the first {self.raster_samples}")
        rows = ([self.start[1]] if self.start is not None else []) + self.raster
        return [torch.stack([step[layer][sample] for step in rows]) for layer in range(len(rows[0]))] if rows else []


def trace_cost(
    net: ConvergentNetwork, trace: StepTrace, steps: int | None = None, nudged: bool = False
) -> NeuromorphicCost:
    """The exact cost of a traced phase, cut after ``steps`` steps (default all; a phase that stopped earlier, by
    ``tol``, holds its state: its steps run count), with each sample's latency within them. ``nudged``: as in
    ``phase_cost``.

    Args:
        net: the network the traced phase ran on.
        trace: the ``StepTrace`` of the phase (at least one step recorded).
        steps: count the first this many steps only (integer >= 1), or None (default) for all.
        nudged: a nudged phase (no input MACs; the ce read-out runs every step).

    Raises:
        ValueError: an empty trace or ``steps < 1``.
    """
    if trace.steps < 1:
        raise ValueError("the trace holds no step: pass it to relax(..., trace=...) first")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1 or None, got {steps}")
    t = trace.steps if steps is None else min(steps, trace.steps)
    counts = torch.stack(trace.counts[:t]).sum(0)  # (batch, layers, COUNTS)
    if trace.start is not None:
        counts = counts + trace.start[0]
    samples = counts.shape[0]
    spikes, synops, events, event_synops = ([float(v) for v in counts[..., k].sum(0)] for k in range(len(COUNTS)))
    dense = phase_dense_macs(net, samples, t, trace.swept)
    if not net.spiking:
        synops, event_synops = list(dense), list(dense)
    return NeuromorphicCost(
        samples, t, spikes, synops, dense, 0.0 if nudged else samples * input_macs(net),
        samples * readout_macs(net, t, nudged), True, latency_steps(trace.predictions_per_step()[:t]), events,
        event_synops,
    )


def traced_free_phase(
    net: ConvergentNetwork,
    x: Tensor,
    steps: int,
    update: UpdateOrder = "async",
    tol: float | None = None,
    start: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    raster_samples: int = 0,
) -> tuple[Relaxation, StepTrace]:
    """``free_phase`` (explicit dynamics) with a ``StepTrace`` on: the same state,
    steps and spike totals; a feed-forward sweep is recorded as the trace's ``start``.

    Args:
        net: the network.
        x: the input batch.
        steps: the most steps to run.
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        tol: stop once a step's largest state change is ``<= tol`` (None: run all steps).
        start: the start state: a state, ``'zeros'`` (None) or ``'feedforward'`` (a sweep).
        omega: the relaxation factor, in (0, 2).
        raster_samples: keep every neuron's spikes of this many first samples (``StepTrace.raster_of``).
    """
    trace = StepTrace(raster_samples)
    return free_phase(net, x, steps, update, "explicit", tol, start, omega, trace=trace), trace


@torch.no_grad()
def traced_nudged_phase(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    state: NetworkState,
    steps: int,
    beta: float,
    update: UpdateOrder = "async",
    tol: float | None = None,
    omega: float = 1.0,
    raster_samples: int = 0,
) -> tuple[Relaxation, StepTrace]:
    """A nudged phase from ``state`` (the free phase's), traced.

    Args:
        net: the network.
        x: the input batch.
        y: the labels, class indices of any integer dtype.
        state: the state the phase starts from.
        steps: the most steps to run.
        beta: the nudge strength, > 0 or < 0.
        update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
        tol: stop once a step's largest state change is ``<= tol`` (None: run all steps).
        omega: the relaxation factor, in (0, 2).
        raster_samples: keep every neuron's spikes of this many first samples (``StepTrace.raster_of``).
    """
    net.check_input(x, y)
    trace = StepTrace(raster_samples)
    phase = run_phase(net, x, input_drive(net, x), state, steps, beta, y.long(), update, tol=tol, omega=omega,
                      trace=trace)
    return phase, trace
