"""What a spiking convergent network would cost on neuromorphic hardware: spikes, synaptic operations (SynOps),
the multiply-accumulates (MACs) of the same network run dense, and the latency until the answer is stable.

Pure functions (the callback that logs them is ``lightning_ep.callbacks.NeuromorphicCostMonitor``).

**Spikes.** A layer's Sigma-Delta neuron sends the signed count ``q = round((s - r) / threshold)`` a step; a graded
spike of ``q`` counts as ``|q|`` spikes (``Relaxation.spikes``' convention), the feed-forward start's sweep included.
**Events** (from a trace only): the messages sent, one per neuron and step with ``q != 0``, whatever ``|q|``: what
hardware with graded spikes (a payload per spike, as Loihi 2's) transmits. Unit spikes (``graded=False``): events =
spikes.

**SynOps** = each (unit) spike times its fan-out (``event_synops``: each event times it), the synapses the engine
updates for it, in both directions, because a layer's transmitted value ``r_l`` enters two computations of every step
(``lightning_ep.dynamics``):

* forward, the drive of layer ``l+1`` through block ``l+1`` (none for the last layer): a dense layer reaches its
  ``features`` neurons; a conv layer with average pooling reaches the ``C_out`` x (in-bound windows containing the
  neuron) outputs of the strided convolution the engine runs (avg pooling folded into a ``K+k-1`` kernel of stride
  ``k``, ``SpikingConv2d.avg_pooled_weight``: 3 x 3 windows for an interior neuron with K=5, k=2, not 5 x 5); with
  max or no pooling, the ``C_out`` x (in-bound K x K windows) stride-1 conv outputs, pooled afterwards;
* feedback, the drive of layer ``l-1`` through the transposed synapses of block ``l`` (none for the first layer:
  the input is clamped, nothing is fed back to it): ``in_features`` for a dense layer, ``C_in`` x (in-bound taps of
  the neuron's window) for a conv layer; with max pooling a pooled neuron's value goes back through the one conv
  position that won the pooling (its taps: exact with padding 0, the window's mean otherwise).

Both are real synaptic events of this network (the energy is symmetric, so every synapse carries a spike both
ways). The non-spiking ends are counted apart, identical in both networks: ``input_macs``, the first block's dense
drive from the image (computed once an inference, kept during all phases) and ``readout_macs``, the ``loss='ce'``
linear read-out (once for the logits; twice a nudged step).

**Dense MACs**: every synapse every step, both directions, as the engine computes them without spikes (max
pooling's feedback runs the transposed conv over the whole unpooled map), plus the feed-forward sweep's forward
drives. A non-spiking layer sends its value on every synapse every step: its SynOps are its dense MACs. (The
reference ``dynamics='autograd'`` also recomputes the input drive every step; the counts describe the explicit
engine.) The weight update of a training step is not counted.

**Exactness.** From a :class:`StepTrace` (``relax(..., trace=...)``), SynOps weigh each neuron's spikes with its own
fan-out (exact). From a :class:`~lightning_ep.dynamics.Relaxation` alone (per-layer totals), SynOps use each layer's
mean fan-out: exact for dense layers and in-bound-everywhere fan-outs, an estimate for conv layers, whose border
neurons reach fewer outputs than interior ones (``NeuromorphicCost.synops_exact`` says which).

**Latency**: the first step after which the prediction (argmax of ``net.logits``) no longer changes, in 1..steps
(the start state is no answer: from zeros it is all zeros; a feed-forward sweep is counted in the cost, not here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ep.blocks import SpikingConv2d, SpikingLinear
from lightning_ep.dynamics import NetworkState, Relaxation, StartKind, UpdateOrder, input_drive, relax, start_state
from lightning_ep.ep import EPResult
from lightning_ep.network import ConvergentNetwork

# -- fan-outs and synapse counts -----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def conv_windows(hw: tuple[int, int], kernel: int, stride: int, padding: int) -> tuple[Tensor, Tensor]:
    """A ``kernel`` x ``kernel`` window sliding with ``stride`` over a zero-padded ``hw`` map: per map position, the
    windows that contain it; per window (an output position), its in-bound taps. Both float64."""
    ones = torch.ones(1, 1, *hw, dtype=torch.float64)
    cols = F.unfold(ones, kernel, padding=padding, stride=stride)
    covering = F.fold(cols, hw, kernel, padding=padding, stride=stride)[0, 0]
    out_hw = ((hw[0] + 2 * padding - kernel) // stride + 1, (hw[1] + 2 * padding - kernel) // stride + 1)
    return covering, cols[0].sum(0).view(out_hw)


def _engine_conv(block: SpikingConv2d) -> tuple[int, int, int]:
    """Kernel, stride and padding of the convolution the engine runs (avg pooling folded into it)."""
    kernel, padding = block.conv.kernel_size[0], block.conv.padding[0]
    if block.pooling == "avg":
        return kernel + block.pool_size - 1, block.pool_size, padding
    return kernel, 1, padding


def forward_fan_out(block: nn.Module) -> Tensor:
    """Per neuron of the block's input (shape ``block.in_shape``): the outputs its forward drive reaches."""
    if isinstance(block, SpikingLinear):
        return torch.full(block.in_shape, float(block.out_shape[0]), dtype=torch.float64)
    if isinstance(block, SpikingConv2d):
        covering, _ = conv_windows(block.in_shape[1:], *_engine_conv(block))
        return (covering * block.out_shape[0]).expand(block.in_shape).clone()
    raise TypeError(f"no fan-out for {type(block).__name__}: use SpikingConv2d or SpikingLinear blocks")


def feedback_fan_out(block: nn.Module) -> Tensor:
    """Per neuron of the block's output (shape ``block.out_shape``): the input neurons its feedback reaches through
    the transposed synapses (max pooling: through the winning conv position; its window's mean unless padding 0)."""
    if isinstance(block, SpikingLinear):
        return torch.full(block.out_shape, float(block.linear.in_features), dtype=torch.float64)
    if isinstance(block, SpikingConv2d):
        _, taps = conv_windows(block.in_shape[1:], *_engine_conv(block))
        if block.pooling == "max":
            k = block.pool_size
            taps = F.avg_pool2d(taps[None, None], k)[0, 0]
        return (taps * block.in_shape[0]).expand(block.out_shape).clone()
    raise TypeError(f"no fan-out for {type(block).__name__}: use SpikingConv2d or SpikingLinear blocks")


def synapses(block: nn.Module) -> float:
    """The synapses of a block as the engine computes them (avg pooling: the folded strided conv; max or none: the
    stride-1 conv before pooling); a dense pass in either direction costs this many MACs a sample."""
    return float(forward_fan_out(block).sum())


def fan_out(net: ConvergentNetwork) -> list[Tensor]:
    """Per state layer (shape ``net.state_shapes[l]``, float64): the synapses one spike of each neuron reaches,
    forward through block ``l+1`` plus feedback through block ``l`` (see the module docstring)."""
    maps = []
    blocks = list(net.blocks)
    for layer, shape in enumerate(net.state_shapes):
        total = torch.zeros(shape, dtype=torch.float64)
        if layer + 1 < len(blocks):
            total = total + forward_fan_out(blocks[layer + 1])
        if layer >= 1:
            total = total + feedback_fan_out(blocks[layer])
        maps.append(total)
    return maps


def dense_macs_per_step(net: ConvergentNetwork) -> list[float]:
    """Per state layer (as sender), a sample's MACs of one dense dynamics step: its forward drive of the layer above
    and its feedback to the layer below (the feedback of block ``l``, over the whole unpooled map with max pooling)."""
    blocks = list(net.blocks)
    return [(synapses(blocks[layer + 1]) if layer + 1 < len(blocks) else 0.0)
            + (synapses(blocks[layer]) if layer >= 1 else 0.0) for layer in range(len(blocks))]


def sweep_macs(net: ConvergentNetwork) -> list[float]:
    """Per state layer, a sample's MACs of the feed-forward start's sweep (its forward drive of the layer above)."""
    blocks = list(net.blocks)
    return [synapses(blocks[layer + 1]) if layer + 1 < len(blocks) else 0.0 for layer in range(len(blocks))]


def input_macs(net: ConvergentNetwork) -> float:
    """A sample's MACs of the first block's drive from the image (dense, once an inference, in every network)."""
    return synapses(net.blocks[0])


def readout_macs(net: ConvergentNetwork, steps: int, nudged: bool) -> float:
    """A sample's MACs of the ``loss='ce'`` read-out in a phase: the logits once (free) or, nudged, the read-out and
    its transpose every step; 0 with ``loss='mse'``."""
    if net.readout is None:
        return 0.0
    return float(net.readout.weight.numel()) * (2 * steps if nudged else 1)


# -- the cost of a phase ---------------------------------------------------------------------------------------------


@dataclass
class NeuromorphicCost:
    """The cost of one or more phases on a batch of ``samples``: per state layer (input side first), summed over the
    samples. ``synops_exact``: False when conv SynOps were estimated with the layer's mean fan-out (from
    ``Relaxation`` totals). ``latency``: per sample, in steps; ``events`` and ``event_synops`` per layer (both from a
    trace only; the free phase's latency for a training step)."""

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
        """Per-sample figures, ``<prefix>/<quantity>[_layer<l>]`` (``l`` = 1 next to the input)."""
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
    """The phases of one batch together (the same samples; steps, counts and MACs add; the first latency kept)."""
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


def _dense_macs(net: ConvergentNetwork, samples: int, steps: int, swept: bool) -> list[float]:
    per_step, sweep = dense_macs_per_step(net), sweep_macs(net)
    return [samples * (steps * a + (b if swept else 0.0)) for a, b in zip(per_step, sweep, strict=True)]


def phase_cost(
    net: ConvergentNetwork, phase: Relaxation, feedforward_start: bool = False, nudged: bool = False
) -> NeuromorphicCost:
    """The cost of a phase from its per-layer spike totals. ``feedforward_start``: the free phase started from the
    feed-forward sweep (its spikes are in ``phase.spikes``; its MACs count). ``nudged``: a +-beta phase (no input
    drive of its own: it shares the free phase's; the ce read-out runs every step). Conv SynOps use the layer's
    mean fan-out (see the module docstring); exact per-neuron counts need a :class:`StepTrace` (:func:`trace_cost`)."""
    samples = phase.state.s[0].shape[0]
    dense = _dense_macs(net, samples, phase.steps, feedforward_start and not nudged)
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
    The weight update (the surrogate's gradient) is not counted."""
    return combine([phase_cost(net, phase, feedforward_start and name == "free", nudged=name != "free")
                    for name, phase in result.phases.items()])


# -- per-step traces -------------------------------------------------------------------------------------------------

COUNTS = ("spikes", "synops", "events", "event_synops")


class StepTrace:
    """Records a relaxation step by step: ``relax(..., trace=StepTrace())`` (or :func:`traced_free_phase`).

    Per step: each sample's spikes, SynOps, events and event SynOps per layer (float64, exact per-neuron fan-outs),
    the prediction (argmax of ``net.logits``) and, for the first ``raster_samples`` samples, every neuron's signed
    spike count. ``start``: the same for the feed-forward sweep, when the phase started from it (set by
    :func:`traced_free_phase`).
    Tensors stay on the network's device; the trace keeps no reference to the network's states."""

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
        """Called by :func:`~lightning_ep.dynamics.relax` at the end of every step."""
        counts, raster = self._count(net, s[0].shape[0], sent)
        self.counts.append(counts)
        self.raster.append(raster)
        with torch.no_grad():
            self.predictions.append(net.logits([t.detach() for t in s]).argmax(1))

    def record_start(self, net: ConvergentNetwork, batch: int, sent: Sequence[Tensor | None]) -> None:
        """Record the feed-forward sweep's spikes (sent from zero)."""
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
        (the sweep excluded)."""
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
        first (when recorded), then one row a step."""
        if not 0 <= sample < self.raster_samples:
            raise ValueError(f"sample {sample} was not recorded: the trace keeps the first {self.raster_samples}")
        rows = ([self.start[1]] if self.start is not None else []) + self.raster
        return [torch.stack([step[layer][sample] for step in rows]) for layer in range(len(rows[0]))] if rows else []


def latency_steps(predictions: Tensor) -> Tensor:
    """Per sample (column of a (steps, batch) tensor of predictions), the first step (1-based) from which the
    prediction equals the last one at every later step: 1 if it never changed, ``steps`` if it changed last step."""
    if predictions.dim() != 2 or predictions.shape[0] < 1:
        raise ValueError(f"predictions must be (steps >= 1, batch), got shape {tuple(predictions.shape)}")
    changed = predictions != predictions[-1]
    step = torch.arange(1, predictions.shape[0] + 1, device=predictions.device)[:, None]
    return (changed * step).amax(0) + 1


def trace_cost(
    net: ConvergentNetwork, trace: StepTrace, steps: int | None = None, nudged: bool = False
) -> NeuromorphicCost:
    """The exact cost of a traced phase, cut after ``steps`` steps (default all; a phase that stopped earlier, by
    ``tol``, holds its state: its steps run count), with each sample's latency within them. ``nudged``: as in
    :func:`phase_cost`."""
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
    dense = _dense_macs(net, samples, t, trace.swept)
    if not net.spiking:
        synops, event_synops = list(dense), list(dense)
    return NeuromorphicCost(
        samples, t, spikes, synops, dense, 0.0 if nudged else samples * input_macs(net),
        samples * readout_macs(net, t, nudged), True, latency_steps(trace.predictions_per_step()[:t]), events,
        event_synops,
    )


def accuracy_at_steps(trace: StepTrace, y: Tensor, steps: Sequence[int]) -> dict[int, float]:
    """Accuracy if inference were cut after each of ``steps`` (a phase that stopped earlier keeps its answer)."""
    predictions = trace.predictions_per_step()
    if predictions.shape[0] < 1:
        raise ValueError("the trace holds no step")
    return {t: float((predictions[min(t, predictions.shape[0]) - 1] == y).double().mean()) for t in steps}


@torch.no_grad()
def traced_free_phase(
    net: ConvergentNetwork,
    x: Tensor,
    steps: int,
    update: UpdateOrder = "async",
    tol: float | None = None,
    init: NetworkState | StartKind | None = None,
    omega: float = 1.0,
    raster_samples: int = 0,
) -> tuple[Relaxation, StepTrace]:
    """:func:`~lightning_ep.ep.free_phase` (explicit dynamics) with a :class:`StepTrace` on: the same state, steps
    and spike totals; a feed-forward sweep is recorded as the trace's ``start``."""
    net.check_input(x)
    x_drive = input_drive(net, x)
    state, sent = start_state(net, x_drive, init)
    trace = StepTrace(raster_samples)
    if init == "feedforward":
        # sent from zero, the sweep's spike counts are r / threshold (a whole number each)
        counts = [torch.round(r / b.neuron.threshold) if b.neuron.spiking else None
                  for r, b in zip(state.r, net.blocks, strict=True)]
        trace.record_start(net, x.shape[0], counts)
    free = relax(net, x_drive, state, steps, 0.0, None, update, tol, omega, trace=trace)
    free.spikes = [a + b for a, b in zip(free.spikes, sent, strict=True)]
    return free, trace


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
    """A nudged phase (``beta`` > 0 or < 0) from ``state`` (the free phase's), traced."""
    net.check_input(x, y)
    trace = StepTrace(raster_samples)
    phase = relax(net, input_drive(net, x), state, steps, beta, y.long(), update, tol, omega, trace=trace)
    return phase, trace
