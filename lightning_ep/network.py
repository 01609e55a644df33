"""A convergent (Hopfield-energy) network of spiking conv and dense blocks, and its energy.

The energy is the single source of truth. With states ``s_1..s_L`` and input ``x = s_0``,

    E(x, s) = 1/2 sum_l |s_l|^2 - sum_l <s_{l+1}, f_l(s_l)>,    f_l = P(W_l * . + b_l) or W_l . + b_l

and ``F = E + beta * loss``. The explicit dynamics (``lightning_ep.dynamics``), the EP estimate and BPTT all
derive from it; tests check the closed-form drives against autograd of this function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ep.blocks import Shape, SpikingConv2d, SpikingLinear
from lightning_ep.sigma_delta import SpikeFunction

LossKind = Literal["mse", "ce"]


@dataclass(frozen=True)
class Conv:
    """A spiking conv layer: ``channels`` output maps, stride-1 conv, then pooling ('avg', 'max' or 'none')."""

    channels: int
    kernel_size: int = 5
    padding: int = 0
    pooling: str | None = "avg"
    pool_size: int = 2


@dataclass(frozen=True)
class Dense:
    """A spiking dense layer of ``features`` neurons."""

    features: int


class ConvergentNetwork(nn.Module):
    """Blocks ``x -> s_1 -> ... -> s_L``. With ``loss='mse'`` the last state layer has ``num_classes`` neurons
    nudged towards the one-hot target; with ``loss='ce'`` a (non-neuron) linear read-out of the last state gives
    the logits. ``threshold > 0`` makes every layer talk through Sigma-Delta spikes of that size."""

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[Conv | Dense],
        num_classes: int = 10,
        loss: LossKind = "mse",
        threshold: float = 0.0,
        graded: bool = True,
        spike_grad: SpikeFunction | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "ce"):
            raise ValueError(f"unknown loss {loss!r}: use 'mse' (one-hot targets on the output layer) or 'ce'")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 1 <= len(input_shape) <= 3 or any(int(d) < 1 for d in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) or (features,) with positive sizes, got {input_shape}")
        self.input_shape: Shape = tuple(int(d) for d in input_shape)
        self.num_classes = num_classes
        self.loss_kind: LossKind = loss
        blocks: list[nn.Module] = []
        shape = self.input_shape
        for spec in layers:
            if isinstance(spec, Conv):
                if blocks and isinstance(blocks[-1], SpikingLinear):
                    raise ValueError("a Conv layer cannot follow a Dense layer")
                block: nn.Module = SpikingConv2d(
                    shape, spec.channels, spec.kernel_size, spec.padding, spec.pooling, spec.pool_size,
                    threshold, graded, spike_grad,
                )
            elif isinstance(spec, Dense):
                block = SpikingLinear(shape, spec.features, threshold, graded, spike_grad)
            else:
                raise TypeError(f"layers must be Conv or Dense specs, got {spec!r}")
            blocks.append(block)
            shape = block.out_shape
        if loss == "mse":
            blocks.append(SpikingLinear(shape, num_classes, threshold, graded, spike_grad))
            self.readout: nn.Linear | None = None
        else:
            if not blocks:
                raise ValueError("loss='ce' needs at least one hidden layer before the read-out")
            self.readout = nn.Linear(math.prod(shape), num_classes)
        self.blocks = nn.ModuleList(blocks)

    # -- shapes and switches -------------------------------------------------------------------------------
    @property
    def state_shapes(self) -> list[Shape]:
        return [b.out_shape for b in self.blocks]

    @property
    def threshold(self) -> float:
        return self.blocks[0].neuron.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        for b in self.blocks:
            b.neuron.threshold = value

    @property
    def spiking(self) -> bool:
        return self.threshold > 0.0

    def zero_states(self, batch: int) -> list[Tensor]:
        p = next(self.parameters())
        return [torch.zeros(batch, *shape, device=p.device, dtype=p.dtype) for shape in self.state_shapes]

    def check_input(self, x: Tensor, y: Tensor | None = None) -> None:
        """Raise a ValueError naming the problem with a batch ``x`` (and labels ``y``)."""
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match the network's input_shape {self.input_shape}: "
                f"pass a batch (B, {', '.join(map(str, self.input_shape))})"
            )
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf values: clean the data (e.g. torch.nan_to_num) first")
        if y is not None:
            if y.shape != (x.shape[0],) or y.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"labels must be integer class indices of shape ({x.shape[0]},), got "
                                 f"{y.dtype} {tuple(y.shape)}")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got range "
                                 f"[{int(y.min())}, {int(y.max())}]")

    # -- the energy and the loss: the single source of truth -------------------------------------------------
    def energy(self, x: Tensor, states: Sequence[Tensor]) -> Tensor:
        """Per-sample Hopfield energy ``E(x, s)``."""
        e = sum(0.5 * s.flatten(1).pow(2).sum(1) for s in states)
        inputs = [x, *states[:-1]]
        for block, s_in, s_out in zip(self.blocks, inputs, states, strict=True):
            e = e - block.coupling(s_in, s_out)
        return e

    def logits(self, states: Sequence[Tensor]) -> Tensor:
        """The network's output: the last state layer (mse) or its linear read-out (ce)."""
        if self.readout is None:
            return states[-1]
        return self.readout(states[-1].flatten(1))

    def loss(self, states: Sequence[Tensor], y: Tensor) -> Tensor:
        """Per-sample cost: ``1/2 |s_L - onehot(y)|^2`` (mse) or cross-entropy of the read-out (ce)."""
        out = self.logits(states)
        if self.readout is None:
            return 0.5 * (out - F.one_hot(y, self.num_classes).to(out.dtype)).pow(2).sum(1)
        return F.cross_entropy(out, y, reduction="none")

    def total_energy(self, x: Tensor, states: Sequence[Tensor], y: Tensor, beta: float) -> Tensor:
        """Per-sample ``F = E + beta * loss``."""
        return self.energy(x, states) + beta * self.loss(states, y)


def two_conv_two_dense(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 5,
    hidden: int = 512,
    pooling: str = "avg",
    loss: LossKind = "mse",
    threshold: float = 0.0,
    **neuron: object,
) -> ConvergentNetwork:
    """The paper's 2C2FC network: conv5x5 32 -> pool -> conv5x5 64 -> pool -> dense ``hidden`` -> dense classes."""
    layers: list[Conv | Dense] = [Conv(c, kernel_size, pooling=pooling) for c in channels]
    layers.append(Dense(hidden))
    return ConvergentNetwork(input_shape, layers, num_classes, loss, threshold, **neuron)  # type: ignore[arg-type]
