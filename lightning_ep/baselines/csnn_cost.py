"""What snnTorch's conv SNN baseline would cost on neuromorphic hardware, counted the way
``lightning_ep.neuromorphic`` counts the convergent network: spikes, SynOps, the multiply-accumulates of the same
network run dense for the same steps, and the latency.

**SynOps**: each spike times the synapses it reaches in the next layer (a feed-forward network has no feedback):
``C_out`` x (in-bound K x K windows of the next stride-1 conv containing the neuron), pooled afterwards, or the next
dense layer's ``features``; the output layer reaches nothing. Exact per neuron (``CSNNRun.neuron_spikes``).
``snn.Leaky`` sends unit spikes, so events = spikes. **Dense MACs**: every synapse of those layers every step; the
first conv's drive from the static image (computed once an inference, as in the convergent network) is
``input_macs``, apart. **Latency**: the first step after which the prediction (the class with the most output spikes
so far) no longer changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_ep.baselines.csnn import CSNNRun, SnnTorchCSNN, conv_output_shapes
from lightning_ep.neuromorphic import NeuromorphicCost, accuracy_if_cut, conv_windows, latency_steps


def csnn_fan_out(module: SnnTorchCSNN) -> list[Tensor]:
    """Per spiking layer (shape of its spikes per sample, float64): the synapses of the next layer one spike reaches.

    Args:
        module: the snnTorch CSNN baseline.
    """
    hp = module.hparams
    conv_shapes = conv_output_shapes(module.input_shape, hp.channels, hp.kernel_size, hp.padding, hp.pooling)
    shapes: list[tuple[int, ...]] = [*conv_shapes, *((d.out_features,) for d in module.dense)]
    maps = []
    for layer, shape in enumerate(shapes):
        if layer + 1 < len(conv_shapes):
            covering, _ = conv_windows(tuple(shape[1:]), hp.kernel_size, 1, hp.padding)
            maps.append((covering * conv_shapes[layer + 1][0]).expand(shape).clone())
        elif layer + 1 < len(shapes):
            maps.append(torch.full(shape, float(module.dense[layer + 1 - len(conv_shapes)].out_features),
                                   dtype=torch.float64))
        else:
            maps.append(torch.zeros(shape, dtype=torch.float64))  # the output layer
    return maps


def csnn_input_macs(module: SnnTorchCSNN) -> float:
    """A sample's MACs of the first layer's drive from the image: the in-bound taps of the first conv (or the first
    dense layer's weights without convs).

    Args:
        module: the snnTorch CSNN baseline.
    """
    if not len(module.convs):
        return float(module.dense[0].weight.numel())
    c, h, w = module.input_shape
    covering, _ = conv_windows((h, w), module.hparams.kernel_size, 1, module.hparams.padding)
    return float(covering.sum()) * c * module.convs[0].out_channels


def csnn_predictions_per_step(run: CSNNRun) -> Tensor:
    """(steps, batch): the prediction had the presentation stopped after each step (most output spikes so far).

    Args:
        run: one presentation, as ``SnnTorchCSNN.simulate`` returns it.
    """
    return run.output_spikes.detach().cumsum(0).argmax(-1)


def csnn_cost(module: SnnTorchCSNN, run: CSNNRun) -> NeuromorphicCost:
    """The exact cost of one presentation (``module.simulate(x)``), per spiking layer and summed over the batch,
    with each sample's latency, as the convergent network's ``NeuromorphicCost``
    (unit spikes: events = spikes; no read-out).

    Args:
        module: the snnTorch CSNN baseline that ran the presentation.
        run: the presentation, as ``module.simulate(x)`` returns it.
    """
    steps, samples = run.output_spikes.shape[:2]
    fan_outs = csnn_fan_out(module)
    spikes = [float(n.sum()) for n in run.neuron_spikes]
    synops = [float((n.double() * f.to(n.device)).sum()) for n, f in zip(run.neuron_spikes, fan_outs, strict=True)]
    dense = [float(f.sum()) * samples * steps for f in fan_outs]
    return NeuromorphicCost(samples, steps, spikes, synops, dense, samples * csnn_input_macs(module),
                            latency=latency_steps(csnn_predictions_per_step(run)), events=list(spikes),
                            event_synops=list(synops))


def csnn_accuracy_at_steps(run: CSNNRun, y: Tensor, steps: Sequence[int]) -> dict[int, float]:
    """Accuracy if the presentation were cut after each of ``steps`` (at most the steps run).

    Args:
        run: one presentation, as ``SnnTorchCSNN.simulate`` returns it.
        y: the batch's class labels.
        steps: the step counts to cut at (beyond the steps run: the last step).
    """
    predictions = csnn_predictions_per_step(run)
    return accuracy_if_cut(predictions, y, steps)
