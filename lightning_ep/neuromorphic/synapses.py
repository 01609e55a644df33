"""Fan-outs and synapse counts: what one spike of each neuron reaches in the engine (forward and feedback), and the
multiply-accumulates of the same network run dense (see the package docstring for what is counted)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ep.blocks import SpikingConv2d, SpikingLinear

if TYPE_CHECKING:
    from lightning_ep.network import ConvergentNetwork


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
    """Per neuron of the block's input (shape ``block.in_shape``): the outputs its forward drive reaches.

    Args:
        block: a ``SpikingConv2d`` or ``SpikingLinear`` block of a network (any other type: a TypeError).
    """
    if isinstance(block, SpikingLinear):
        return torch.full(block.in_shape, float(block.out_shape[0]), dtype=torch.float64)
    if isinstance(block, SpikingConv2d):
        covering, _ = conv_windows(block.in_shape[1:], *_engine_conv(block))
        return (covering * block.out_shape[0]).expand(block.in_shape).clone()
    raise TypeError(f"no fan-out for {type(block).__name__}: use SpikingConv2d or SpikingLinear blocks")


def feedback_fan_out(block: nn.Module) -> Tensor:
    """Per neuron of the block's output (shape ``block.out_shape``): the input neurons its feedback reaches through
    the transposed synapses (max pooling: through the winning conv position; its window's mean unless padding 0).

    Args:
        block: a ``SpikingConv2d`` or ``SpikingLinear`` block of a network (any other type: a TypeError).
    """
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
    stride-1 conv before pooling); a dense pass in either direction costs this many MACs a sample.

    Args:
        block: a ``SpikingConv2d`` or ``SpikingLinear`` block of a network (any other type: a TypeError).
    """
    return float(forward_fan_out(block).sum())


def fan_out(net: ConvergentNetwork) -> list[Tensor]:
    """Per state layer (shape ``net.state_shapes[l]``, float64): the synapses one spike of each neuron reaches,
    forward through block ``l+1`` plus feedback through block ``l`` (see the package docstring).

    Args:
        net: the network (its blocks ``SpikingConv2d`` or ``SpikingLinear``).
    """
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
    and its feedback to the layer below (the feedback of block ``l``, over the whole unpooled map with max pooling).

    Args:
        net: the network (its blocks ``SpikingConv2d`` or ``SpikingLinear``).
    """
    blocks = list(net.blocks)
    return [(synapses(blocks[layer + 1]) if layer + 1 < len(blocks) else 0.0)
            + (synapses(blocks[layer]) if layer >= 1 else 0.0) for layer in range(len(blocks))]


def sweep_macs(net: ConvergentNetwork) -> list[float]:
    """Per state layer, a sample's MACs of the feed-forward start's sweep (its forward drive of the layer above).

    Args:
        net: the network (its blocks ``SpikingConv2d`` or ``SpikingLinear``).
    """
    blocks = list(net.blocks)
    return [synapses(blocks[layer + 1]) if layer + 1 < len(blocks) else 0.0 for layer in range(len(blocks))]


def input_macs(net: ConvergentNetwork) -> float:
    """A sample's MACs of the first block's drive from the image (dense, once an inference, in every network).

    Args:
        net: the network (its blocks ``SpikingConv2d`` or ``SpikingLinear``).
    """
    return synapses(net.blocks[0])


def readout_macs(net: ConvergentNetwork, steps: int, nudged: bool) -> float:
    """A sample's MACs of the ``loss='ce'`` read-out in a phase: the logits once (free) or, nudged, the read-out and
    its transpose every step; 0 with ``loss='mse'``.

    Args:
        net: the network (its ``readout``: the ce read-out, or None with ``loss='mse'``).
        steps: dynamics steps of the phase (integer >= 0; counts only when ``nudged``).
        nudged: a nudged phase (the read-out and its transpose every step) rather than a free one (the logits once).
    """
    if net.readout is None:
        return 0.0
    return float(net.readout.weight.numel()) * (2 * steps if nudged else 1)


def phase_dense_macs(net: ConvergentNetwork, samples: int, steps: int, swept: bool) -> list[float]:
    """Per state layer, the dense MACs of a phase of ``steps`` steps on ``samples`` samples (``swept``: plus the
    feed-forward start's sweep).

    Args:
        net: the network (its blocks ``SpikingConv2d`` or ``SpikingLinear``).
        samples: samples of the batch (integer >= 0).
        steps: dynamics steps of the phase (integer >= 0; the sweep not counted).
        swept: the phase started from the feed-forward sweep (add the sweep's forward drives once a sample).
    """
    per_step, sweep = dense_macs_per_step(net), sweep_macs(net)
    return [samples * (steps * a + (b if swept else 0.0)) for a, b in zip(per_step, sweep, strict=True)]
