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
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ep.blocks import Shape, SpikingConv2d, SpikingLinear
from lightning_ep.phases import free_phase
from lightning_ep.pooling import POOLING_KINDS, check_pooling, pooled_hw
from lightning_ep.sigma_delta import SpikeFunction

if TYPE_CHECKING:
    from lightning_ep.dynamics import NetworkState, StartKind, UpdateOrder

LossKind = Literal["mse", "ce"]


@dataclass(frozen=True)
class Conv:
    """A spiking conv layer: ``channels`` output maps, stride-1 conv, then pooling ('avg', 'max' or 'none').

    Args:
        channels: output feature maps (integer >= 1).
        kernel_size: side of the square kernel, in pixels (integer >= 1; default 5).
        padding: zeros added on every side before the convolution, in pixels (integer >= 0; default 0);
            ``(kernel_size - 1) // 2`` keeps the map's size.
        pooling: ``'avg'`` (default), ``'max'`` or ``'none'`` (None is ``'none'``).
        pool_size: side of the non-overlapping pooling window, in pixels (integer >= 1; default 2; unused with
            ``'none'``).
    """

    channels: int
    kernel_size: int = 5
    padding: int = 0
    pooling: str | None = "avg"
    pool_size: int = 2


@dataclass(frozen=True)
class Dense:
    """A spiking dense layer of ``features`` neurons.

    Args:
        features: neurons in the layer (integer >= 1).
    """

    features: int


class ConvergentNetwork(nn.Module):
    """Blocks ``x -> s_1 -> ... -> s_L``. With ``loss='mse'`` the last state layer has ``num_classes`` neurons
    nudged towards the one-hot target; with ``loss='ce'`` a (non-neuron) linear read-out of the last state gives
    the logits. ``threshold > 0`` makes every layer talk through Sigma-Delta spikes of that size.
    ``label_smoothing > 0`` replaces the one-hot target by ``(1 - label_smoothing) * onehot + label_smoothing /
    num_classes`` (``targets``) in the loss, so in the nudged phases too.

    Args:
        input_shape: one sample's shape, ``(C, H, W)`` for images or ``(features,)`` (positive sizes; conv layers
            need ``(C, H, W)``).
        layers: the hidden layers, input side first: ``Conv`` specs, then ``Dense`` specs (a Conv cannot follow a
            Dense). With ``loss='mse'`` the ``num_classes`` output layer is added after them; ``loss='ce'`` needs
            at least one.
        num_classes: classes (integer >= 2); labels are class indices in ``[0, num_classes)``.
        loss: ``'mse'`` (the last state layer is nudged towards the one-hot target; default) or ``'ce'``
            (cross-entropy of a linear read-out of the last state).
        threshold: the Sigma-Delta spike size, in units of the state (finite, >= 0; default 0: no spikes).
        graded: a step sends the whole rounded change as one graded spike (True, default), or at most one signed
            spike per neuron (False).
        spike_grad: snnTorch surrogate gradient of non-graded spikes in BPTT (None: ``snntorch.surrogate.atan()``).
        label_smoothing: the share of the target spread evenly over all classes, in ``[0, 1)`` (default 0: the
            one-hot target).

    Raises:
        ValueError: an unknown ``loss``, ``num_classes < 2``, a bad ``input_shape``, a layer that does not fit
            its input or ``label_smoothing`` outside ``[0, 1)``.
        TypeError: a layer that is not a ``Conv`` or ``Dense`` spec.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[Conv | Dense],
        num_classes: int = 10,
        loss: LossKind = "mse",
        threshold: float = 0.0,
        graded: bool = True,
        spike_grad: SpikeFunction | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        check_label_smoothing(label_smoothing)
        if loss not in ("mse", "ce"):
            raise ValueError(f"unknown loss {loss!r}: use 'mse' (one-hot targets on the output layer) or 'ce'")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 1 <= len(input_shape) <= 3 or any(int(d) < 1 for d in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) or (features,) with positive sizes, got {input_shape}")
        self.input_shape: Shape = tuple(int(d) for d in input_shape)
        self.layer_specs: tuple[Conv | Dense, ...] = tuple(layers)  # what was built, input side first
        self.num_classes = num_classes
        self.loss_kind: LossKind = loss
        self.label_smoothing = float(label_smoothing)
        blocks: list[nn.Module] = []
        shape = self.input_shape
        for number, spec in enumerate(layers, start=1):
            if isinstance(spec, Conv):
                if blocks and isinstance(blocks[-1], SpikingLinear):
                    raise ValueError("a Conv layer cannot follow a Dense layer")
                try:
                    block: nn.Module = SpikingConv2d(
                        shape, spec.channels, spec.kernel_size, spec.padding, spec.pooling, spec.pool_size,
                        threshold, graded, spike_grad,
                    )
                except ValueError as err:
                    raise ValueError(f"layer {number}, {spec}, on an input of shape {shape}: {err}"
                                     f"{_conv_fit_hint(spec, shape)}") from err
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
        """All-zero states, one ``(batch, *shape)`` tensor per layer (``state_shapes``), on the parameters' device
        and dtype.

        Args:
            batch: the number of samples (integer >= 0).
        """
        p = next(self.parameters())
        return [torch.zeros(batch, *shape, device=p.device, dtype=p.dtype) for shape in self.state_shapes]

    def check_input(self, x: Tensor, y: Tensor | None = None) -> None:
        """Raise a ValueError naming the problem with a batch ``x`` (and labels ``y``: class indices of any integer
        dtype, which the engine converts to int64), NaN/inf inputs included.

        Args:
            x: the input batch to check, expected ``(B, *input_shape)`` with finite values.
            y: the labels to check, expected ``(B,)`` class indices in ``[0, num_classes)`` (None: check ``x`` only).
        """
        check_batch(x, y, self.input_shape, self.num_classes)
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf values: clean the data (e.g. torch.nan_to_num) first")

    def forward(
        self,
        x: Tensor,
        t1: int = 60,
        start: NetworkState | StartKind | None = "zeros",
        update: UpdateOrder = "async",
        tol: float | None = None,
        omega: float = 1.0,
    ) -> Tensor:
        """The logits after a free phase (``free_phase``, without autograd):
        ``net(x).argmax(1)`` predicts. The defaults are ``equilibrium_propagation``'s; pass the settings the network
        was trained with (e.g. ``t1=10, start='feedforward'``) to evaluate it as trained.

        Args:
            x: the input batch, ``(B, *input_shape)``, floats.
            t1: the free phase's most steps (integer >= 1; default 60).
            start: the start state: a state, ``'zeros'`` or ``'feedforward'`` (a sweep).
            update: ``'async'`` (odd layers, then even) or ``'sync'`` (all at once).
            tol: stop once a step's largest state change is ``<= tol`` (None: run all ``t1`` steps).
            omega: the relaxation factor, in (0, 2).
        """
        with torch.no_grad():
            return self.logits(free_phase(self, x, t1, update, "explicit", tol, start, omega).state.s)

    # -- the energy and the loss: the single source of truth -------------------------------------------------
    def energy(self, x: Tensor, states: Sequence[Tensor]) -> Tensor:
        """Per-sample Hopfield energy ``E(x, s)``, shape ``(B,)``.

        Args:
            x: the input batch, ``(B, *input_shape)``.
            states: the states, one ``(B, *shape)`` tensor per layer in ``state_shapes`` order (input side first).
        """
        e = sum(0.5 * s.flatten(1).pow(2).sum(1) for s in states)
        inputs = [x, *states[:-1]]
        for block, s_in, s_out in zip(self.blocks, inputs, states, strict=True):
            e = e - block.coupling(s_in, s_out)
        return e

    def logits(self, states: Sequence[Tensor]) -> Tensor:
        """The network's output, ``(B, num_classes)``: the last state layer (mse) or its linear read-out (ce).

        Args:
            states: the states, one ``(B, *shape)`` tensor per layer in ``state_shapes`` order (input side first).
        """
        if self.readout is None:
            return states[-1]
        return self.readout(states[-1].flatten(1))

    def targets(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """The target rows of labels ``y``, ``(B, num_classes)``: one-hot, smoothed by ``label_smoothing``.

        Args:
            y: the labels, ``(B,)`` class indices in ``[0, num_classes)`` of any integer dtype.
            dtype: the floating dtype of the rows (the states').
        """
        one_hot = F.one_hot(y.long(), self.num_classes).to(dtype)
        if self.label_smoothing == 0.0:
            return one_hot
        return one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes

    def loss(self, states: Sequence[Tensor], y: Tensor) -> Tensor:
        """Per-sample cost: ``1/2 |s_L - targets(y)|^2`` (mse) or cross-entropy of the read-out against the same
        targets (ce); ``y`` holds class indices of any integer dtype.

        Args:
            states: the states, one ``(B, *shape)`` tensor per layer in ``state_shapes`` order (input side first).
            y: the labels, ``(B,)`` class indices in ``[0, num_classes)`` of any integer dtype.
        """
        out = self.logits(states)
        if self.readout is None:
            return 0.5 * (out - self.targets(y, out.dtype)).pow(2).sum(1)
        # cross_entropy takes int64 labels only (no copy when y is int64 already)
        return F.cross_entropy(out, y.long(), reduction="none", label_smoothing=self.label_smoothing)

    def total_energy(self, x: Tensor, states: Sequence[Tensor], y: Tensor, beta: float) -> Tensor:
        """Per-sample ``F = E + beta * loss``, shape ``(B,)``.

        Args:
            x: the input batch, ``(B, *input_shape)``.
            states: the states, one ``(B, *shape)`` tensor per layer in ``state_shapes`` order (input side first).
            y: the labels, ``(B,)`` class indices in ``[0, num_classes)`` of any integer dtype.
            beta: the nudge strength, dimensionless (a float; 0 gives the energy ``E`` alone).
        """
        return self.energy(x, states) + beta * self.loss(states, y)


def check_batch(x: Tensor, y: Tensor | None, input_shape: Sequence[int], num_classes: int) -> None:
    """Raise a ValueError naming the problem with a batch ``x`` of ``input_shape`` samples (and labels ``y``:
    integer class indices in ``[0, num_classes)``)."""
    input_shape = tuple(input_shape)
    if x.dim() != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match the network's input_shape {input_shape}: "
            f"pass a batch (B, {', '.join(map(str, input_shape))})"
        )
    if y is None:
        return
    if y.shape != (x.shape[0],) or not is_class_index_dtype(y.dtype):
        raise ValueError(f"labels must be integer class indices of shape ({x.shape[0]},), got "
                         f"{y.dtype} {tuple(y.shape)}: pass one class index per sample (any integer "
                         "dtype), not one-hot rows, floats or booleans")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")


def check_label_smoothing(value: float) -> None:
    """Raise a ValueError unless ``value`` is a label smoothing in ``[0, 1)`` (1 would leave no label at all)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {value!r}: 0 keeps the one-hot target, "
                         "0.1 spreads a tenth of it over all classes")


def is_class_index_dtype(dtype: torch.dtype) -> bool:
    """Whether labels of ``dtype`` are class indices: any integer dtype (not bool, float or complex)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _conv_fit_hint(spec: Conv, in_shape: Shape) -> str:
    """What to change when a conv layer does not fit its input: the smallest padding that does, if any."""
    if len(in_shape) != 3 or (spec.pooling or "none") not in POOLING_KINDS:
        return ""
    padding = _smallest_padding(in_shape[1:], 1, spec.kernel_size, spec.pooling, spec.pool_size)
    if padding is None or padding <= spec.padding:
        return ""
    return f". Give this layer padding={padding} (or a smaller kernel_size), or feed larger inputs"


def _stack_fits(hw: Sequence[int], convs: int, kernel_size: int, padding: int, pooling: str, pool_size: int) -> bool:
    """Whether ``convs`` stacked conv + pooling layers leave at least one pixel of an ``hw`` input."""
    h, w = int(hw[0]), int(hw[1])
    for _ in range(convs):
        conv_hw = (h + 2 * padding - kernel_size + 1, w + 2 * padding - kernel_size + 1)
        h, w = pooled_hw(conv_hw, check_pooling(pooling), pool_size)
        if min(*conv_hw, h, w) < 1:
            return False
    return True


def _smallest_padding(hw: Sequence[int], convs: int, kernel_size: int, pooling: str | None,
                      pool_size: int) -> int | None:
    """The smallest padding below ``kernel_size`` with which the stack fits (see ``_stack_fits``), or None."""
    fitting = (p for p in range(kernel_size) if _stack_fits(hw, convs, kernel_size, p, pooling or "none", pool_size))
    return next(fitting, None)


def two_conv_two_dense(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 5,
    hidden: int = 512,
    pooling: str = "avg",
    loss: LossKind = "mse",
    threshold: float = 0.0,
    padding: int = 0,
    **neuron: object,
) -> ConvergentNetwork:
    """The paper's 2C2FC network: conv5x5 32 -> pool -> conv5x5 64 -> pool -> dense ``hidden`` -> dense classes.
    ``padding`` pads every convolution (``(kernel_size - 1) // 2`` keeps their size: small inputs such as 8x8
    need it).

    Args:
        input_shape: one image's shape ``(C, H, W)`` (default ``(1, 28, 28)``).
        num_classes: classes (integer >= 2; default 10).
        channels: output maps of each conv layer (integers >= 1; default ``(32, 64)``: two conv layers).
        kernel_size: side of every conv kernel, in pixels (integer >= 1; default 5).
        hidden: neurons of the dense hidden layer (integer >= 1; default 512).
        pooling: ``'avg'`` (default), ``'max'`` or ``'none'``, 2x2, after every conv.
        loss: ``'mse'`` (default) or ``'ce'``, as in ``ConvergentNetwork``.
        threshold: the Sigma-Delta spike size, in units of the state (finite, >= 0; default 0: no spikes).
        padding: zeros added on every side of every conv input, in pixels (integer >= 0; default 0).
        **neuron: ``graded``, ``spike_grad`` and ``label_smoothing``, passed to ``ConvergentNetwork``.

    Raises:
        ValueError: a network that does not fit ``input_shape`` (with the padding that would), or any
            ``ConvergentNetwork`` error.
    """
    layers: list[Conv | Dense] = [Conv(c, kernel_size, padding, pooling) for c in channels]
    layers.append(Dense(hidden))
    try:
        return ConvergentNetwork(input_shape, layers, num_classes, loss, threshold, **neuron)  # type: ignore[arg-type]
    except ValueError as err:
        geometry = len(input_shape) == 3 and kernel_size >= 1 and padding >= 0 and pooling in POOLING_KINDS
        if not geometry or _stack_fits(input_shape[1:], len(channels), kernel_size, padding, pooling, 2):
            raise  # not a size problem
        size = f"{input_shape[1]}x{input_shape[2]}"
        fits = _smallest_padding(input_shape[1:], len(channels), kernel_size, pooling, 2)
        advice = (f"pass padding={fits} to two_conv_two_dense (the smallest that fits {size} inputs; "
                  "padding=(kernel_size - 1) // 2 keeps every convolution's size) or a smaller kernel_size"
                  if fits is not None else
                  f"{size} inputs are too small for {len(channels)} conv + pooling layers at any padding: pass a "
                  "smaller kernel_size or fewer channels")
        raise ValueError(f"two_conv_two_dense(input_shape={tuple(input_shape)}, kernel_size={kernel_size}, "
                         f"padding={padding}) does not fit its input: {advice}. ({err})") from err
