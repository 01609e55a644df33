"""The cost record of one or more phases (``NeuromorphicCost``) and the cost of a phase or a training step from
the per-layer spike totals of a ``Relaxation``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from lightning_ep.neuromorphic.synapses import fan_out, input_macs, phase_dense_macs, readout_macs

if TYPE_CHECKING:
    from lightning_ep.dynamics import Relaxation
    from lightning_ep.ep import EPResult
    from lightning_ep.network import ConvergentNetwork


@dataclass
class NeuromorphicCost:
    """The cost of one or more phases on a batch of ``samples``: per state layer (input side first), summed over the
    samples. ``synops_exact``: False when conv SynOps were estimated with the layer's mean fan-out (from
    ``Relaxation`` totals). ``latency``: per sample, in steps; ``events`` and ``event_synops`` per layer (both from a
    trace only; the free phase's latency for a training step).

    Args:
        samples: samples of the batch (integer >= 0).
        steps: dynamics steps of the phases together (integer >= 0; the feed-forward sweep not counted).
        spikes: per state layer, the spikes sent, summed over the samples (>= 0; a graded spike of ``k``
            thresholds counts ``k``).
        synops: per state layer, synaptic operations: each spike times its fan-out, forward and feedback (>= 0).
        dense_macs: per state layer, the multiply-accumulates of the same network run dense for the same steps
            (>= 0).
        input_macs: MACs of the drive from the input image (>= 0; 0 for a nudged phase, which shares the free
            phase's).
        readout_macs: MACs of the ce read-out (>= 0; 0 with the mse output).
        synops_exact: whether ``synops`` weigh each neuron's spikes by its own fan-out (False: by the layer's mean).
        latency: per sample, the steps until the prediction stops changing (integers in [1, steps]), or None.
        events: per state layer, messages sent (a graded spike is one event), or None without a trace.
        event_synops: per state layer, events times fan-out, or None without a trace.
    """

    samples: int
    steps: int
    spikes: list[float]
    synops: list[float]
    dense_macs: list[float]
    input_macs: float = 0.0
    readout_macs: float = 0.0
    synops_exact: bool = True
    latency: Tensor | None = None
    events: list[float] | None = None
    event_synops: list[float] | None = None

    @property
    def total_spikes(self) -> float:
        return sum(self.spikes)

    @property
    def total_synops(self) -> float:
        return sum(self.synops)

    @property
    def total_dense_macs(self) -> float:
        return sum(self.dense_macs)

    @property
    def synops_per_dense_mac(self) -> float:
        """SynOps over the dense network's MACs (the recurrent synapses; the input and read-out ends excluded)."""
        return self.total_synops / self.total_dense_macs if self.total_dense_macs else float("nan")

    def metrics(self, prefix: str) -> dict[str, float]:
        """Per-sample figures, ``<prefix>/<quantity>[_layer<l>]`` (``l`` = 1 next to the input).

        Args:
            prefix: the start of every key, e.g. ``'train/cost'`` (as ``NeuromorphicCostMonitor`` logs them).
        """
        n = max(self.samples, 1)
        out: dict[str, float] = {}
        for name, values in (("spikes", self.spikes), ("synops", self.synops), ("dense_macs", self.dense_macs)):
            for layer, value in enumerate(values, start=1):
                out[f"{prefix}/{name}_layer{layer}"] = value / n
            out[f"{prefix}/{name}"] = sum(values) / n
        for name, maybe in (("events", self.events), ("event_synops", self.event_synops)):
            if maybe is not None:
                out[f"{prefix}/{name}"] = sum(maybe) / n
        out[f"{prefix}/synops_per_dense_mac"] = self.synops_per_dense_mac
        out[f"{prefix}/input_macs"] = self.input_macs / n
        if self.readout_macs:
            out[f"{prefix}/readout_macs"] = self.readout_macs / n
        if self.latency is not None and self.latency.numel():
            out[f"{prefix}/latency"] = float(self.latency.double().mean())
        return out


def combine(costs: Sequence[NeuromorphicCost]) -> NeuromorphicCost:
    """The phases of one batch together (the same samples; steps, counts and MACs add; the first latency kept).

    Args:
        costs: the phases' costs (non-empty, all with the same ``samples`` and number of layers).

    Raises:
        ValueError: ``costs`` empty or of different ``samples``.
    """
    if not costs:
        raise ValueError("combine needs at least one cost")
    samples = costs[0].samples
    if any(c.samples != samples for c in costs):
        raise ValueError(f"phases of one batch have the same samples, got {[c.samples for c in costs]}")
    return NeuromorphicCost(
        samples, sum(c.steps for c in costs),
        [sum(v) for v in zip(*(c.spikes for c in costs), strict=True)],
        [sum(v) for v in zip(*(c.synops for c in costs), strict=True)],
        [sum(v) for v in zip(*(c.dense_macs for c in costs), strict=True)],
        sum(c.input_macs for c in costs), sum(c.readout_macs for c in costs),
        all(c.synops_exact for c in costs), next((c.latency for c in costs if c.latency is not None), None),
        _sum_lists([c.events for c in costs]), _sum_lists([c.event_synops for c in costs]),
    )


def _sum_lists(lists: Sequence[list[float] | None]) -> list[float] | None:
    """Per-layer sums, or None unless every phase has them."""
    if any(v is None for v in lists):
        return None
    return [sum(v) for v in zip(*lists, strict=True)]


def phase_cost(
    net: ConvergentNetwork, phase: Relaxation, feedforward_start: bool = False, nudged: bool = False
) -> NeuromorphicCost:
    """The cost of a phase from its per-layer spike totals. ``feedforward_start``: the free phase started from the
    feed-forward sweep (its spikes are in ``phase.spikes``; its MACs count). ``nudged``: a +-beta phase (no input
    drive of its own: it shares the free phase's; the ce read-out runs every step). Conv SynOps use the layer's
    mean fan-out (see the package docstring); exact per-neuron counts need a trace
    (``trace_cost``).

    Args:
        net: the network the phase ran on.
        phase: the phase (a ``Relaxation``, with its per-layer spike totals).
        feedforward_start: the phase started from the feed-forward sweep (count the sweep's MACs).
        nudged: a nudged phase (no input MACs; the ce read-out runs every step).
    """
    samples = phase.state.s[0].shape[0]
    dense = phase_dense_macs(net, samples, phase.steps, feedforward_start and not nudged)
    n_layers = len(net.blocks)
    spikes = [float(c) for c in phase.spikes] if phase.spikes else [0.0] * n_layers
    maps = fan_out(net)
    if net.spiking:
        synops = [count * float(m.mean()) for count, m in zip(spikes, maps, strict=True)]
        exact = all(bool(m.min() == m.max()) or count == 0.0 for count, m in zip(spikes, maps, strict=True))
    else:
        synops, exact = list(dense), True
    return NeuromorphicCost(
        samples, phase.steps, spikes, synops, dense, 0.0 if nudged else samples * input_macs(net),
        samples * readout_macs(net, phase.steps, nudged), exact,
    )


def training_step_cost(net: ConvergentNetwork, result: EPResult, feedforward_start: bool = False) -> NeuromorphicCost:
    """A training step's cost: its free phase and the nudged phases it ran (``result.phases``), one input drive.
    The weight update (the surrogate's gradient) is not counted.

    Args:
        net: the network the step ran on.
        result: the step's ``EPResult`` (its ``phases``).
        feedforward_start: the free phase started from the feed-forward sweep (count the sweep).
    """
    return combine([phase_cost(net, phase, feedforward_start and name == "free", nudged=name != "free")
                    for name, phase in result.phases.items()])
