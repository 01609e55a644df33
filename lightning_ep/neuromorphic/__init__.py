"""What a spiking convergent network would cost on neuromorphic hardware: spikes, synaptic operations (SynOps),
the multiply-accumulates (MACs) of the same network run dense, and the latency until the answer is stable.

Pure functions (the callback that logs them is ``lightning_ep.callbacks.NeuromorphicCostMonitor``), one concept a
module: ``synapses`` (fan-outs, synapse and MAC counts), ``cost`` (the ``NeuromorphicCost`` record, the cost of a
phase and of a training step), ``trace`` (``StepTrace``, the exact cost of a trace, the traced phases) and
``latency`` (steps until the answer is stable). Every name is importable from ``lightning_ep.neuromorphic``.

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

**Exactness.** From a ``StepTrace`` (``relax(..., trace=...)``), SynOps weigh each neuron's spikes with its own
fan-out (exact). From a ``Relaxation`` alone (per-layer totals), SynOps use each layer's
mean fan-out: exact for dense layers and in-bound-everywhere fan-outs, an estimate for conv layers, whose border
neurons reach fewer outputs than interior ones (``NeuromorphicCost.synops_exact`` says which).

**Latency**: the first step after which the prediction (argmax of ``net.logits``) no longer changes, in 1..steps
(the start state is no answer: from zeros it is all zeros; a feed-forward sweep is counted in the cost, not here).
"""

from lightning_ep.neuromorphic.cost import NeuromorphicCost, combine, phase_cost, training_step_cost
from lightning_ep.neuromorphic.latency import accuracy_at_steps, accuracy_if_cut, latency_steps
from lightning_ep.neuromorphic.synapses import (
    conv_windows,
    dense_macs_per_step,
    fan_out,
    feedback_fan_out,
    forward_fan_out,
    input_macs,
    phase_dense_macs,
    readout_macs,
    sweep_macs,
    synapses,
)
from lightning_ep.neuromorphic.trace import COUNTS, StepTrace, trace_cost, traced_free_phase, traced_nudged_phase

__all__ = [
    "COUNTS",
    "NeuromorphicCost",
    "StepTrace",
    "accuracy_at_steps",
    "accuracy_if_cut",
    "combine",
    "conv_windows",
    "dense_macs_per_step",
    "fan_out",
    "feedback_fan_out",
    "forward_fan_out",
    "input_macs",
    "latency_steps",
    "phase_cost",
    "phase_dense_macs",
    "readout_macs",
    "sweep_macs",
    "synapses",
    "trace_cost",
    "traced_free_phase",
    "traced_nudged_phase",
    "training_step_cost",
]
