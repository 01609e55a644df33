"""Spiking blocks of a convergent network: synapses from one layer to the next, pooling, and the next layer's
Sigma-Delta neuron. Each block gives its energy coupling and, in closed form, that coupling's two gradients:
the forward drive (to the next layer) and the feedback (to the previous layer)."""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ep.pooling import PoolingKind, check_pooling, pool, pool_adjoint, pooled_hw
from lightning_ep.sigma_delta import SigmaDelta, SpikeFunction

Shape = tuple[int, ...]


class SpikingConv2d(nn.Module):
    """conv (stride 1) -> pooling -> Sigma-Delta neuron. Coupling: ``<s_out, P(W * s_in + b)>``.

    Args:
        in_shape: the input layer's shape ``(C, H, W)``.
        channels: output maps (integer >= 1).
        kernel_size: side of the square kernel, in pixels (integer >= 1; default 5).
        padding: zeros added on every side of the input, in pixels (integer >= 0; default 0).
        pooling: ``'avg'`` (default), ``'max'`` or ``'none'`` (None is ``'none'``).
        pool_size: side of the non-overlapping pooling window, in pixels (integer >= 1; default 2).
        threshold: the neuron's Sigma-Delta spike size, in units of the state (finite, >= 0; default 0: no spikes).
        graded: one graded spike a step carrying the whole rounded change (True, default), or at most one signed
            spike a step (False).
        spike_grad: snnTorch surrogate gradient of non-graded spikes in BPTT (None: ``snntorch.surrogate.atan()``).

    Raises:
        ValueError: a bad argument, or a kernel or pooling window that does not fit the input.
    """

    def __init__(
        self,
        in_shape: Shape,
        channels: int,
        kernel_size: int = 5,
        padding: int = 0,
        pooling: str | None = "avg",
        pool_size: int = 2,
        threshold: float = 0.0,
        graded: bool = True,
        spike_grad: SpikeFunction | None = None,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"a conv block needs a (channels, height, width) input, got shape {tuple(in_shape)}")
        if channels < 1 or kernel_size < 1 or padding < 0 or pool_size < 1:
            raise ValueError(
                f"conv block needs channels>=1, kernel_size>=1, padding>=0, pool_size>=1; got {channels}, "
                f"{kernel_size}, {padding}, {pool_size}"
            )
        self.pooling: PoolingKind = check_pooling(pooling)
        self.pool_size = pool_size
        self.in_shape = tuple(in_shape)
        self.conv = nn.Conv2d(in_shape[0], channels, kernel_size, padding=padding)
        h, w = in_shape[1] + 2 * padding - kernel_size + 1, in_shape[2] + 2 * padding - kernel_size + 1
        if h < 1 or w < 1:
            raise ValueError(f"kernel {kernel_size} with padding {padding} does not fit input {tuple(in_shape)}")
        self.conv_hw = (h, w)
        ph, pw = pooled_hw((h, w), self.pooling, pool_size)
        if ph < 1 or pw < 1:
            raise ValueError(f"pooling {pool_size}x{pool_size} does not fit the conv output {h}x{w}")
        self.out_shape: Shape = (channels, ph, pw)
        self.neuron = SigmaDelta(threshold, graded, spike_grad)
        self._pooled_weight: tuple[weakref.ref, int, Tensor] | None = None  # avg_pooled_weight() outside autograd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pooled_weight": None}  # the memo holds a weakref, which does not pickle

    def forward_drive(self, s_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """``P(W * s_in + b)`` and the max-pooling indices (``None`` unless max pooling). Average pooling is
        folded into the convolution (see ``avg_pooled_weight``), which is exact and ~3x fewer FLOPs.

        Args:
            s_in: the input layer's (transmitted) state, ``(B, *in_shape)``.
        """
        if self.pooling == "avg":
            conv = self.conv
            return F.conv2d(s_in, self.avg_pooled_weight(), conv.bias, self.pool_size, conv.padding), None
        return pool(self.conv(s_in), self.pooling, self.pool_size)

    def feedback(self, s_out: Tensor, indices: Tensor | None) -> Tensor:
        """``W^T *' P^T(s_out)``: the gradient of the coupling with respect to ``s_in``, ``(B, *in_shape)``.

        Args:
            s_out: the output layer's (transmitted) state, ``(B, *out_shape)``.
            indices: the max-pooling indices ``forward_drive`` returned for the current input (needed with max
                pooling; ignored, and may be None, otherwise).
        """
        padding = self.conv.padding
        if self.pooling == "avg":
            k, w = self.pool_size, self.avg_pooled_weight()
            out_pad = [n - ((m - 1) * k - 2 * p + w.shape[d + 2]) for d, (n, m, p) in
                       enumerate(zip(self.in_shape[1:], s_out.shape[2:], padding, strict=True))]
            return F.conv_transpose2d(s_out, w, stride=k, padding=padding, output_padding=out_pad)
        up = pool_adjoint(s_out, self.pooling, self.pool_size, indices, self.conv_hw)
        return F.conv_transpose2d(up, self.conv.weight, padding=padding)

    def avg_pooled_weight(self) -> Tensor:
        """``W'`` with ``avgpool_k(W * s) = W' *_{stride k} s``: ``W`` convolved with a k x k box of 1/k^2
        (kernel K + k - 1). The adjoint, nearest upsampling / k^2 then ``W^T``, is the stride-k transpose of ``W'``."""
        w, k = self.conv.weight, self.pool_size
        differentiable = torch.is_grad_enabled() and w.requires_grad
        memo = self._pooled_weight
        if not differentiable and memo is not None and memo[0]() is w and memo[1] == w._version:
            return memo[2]  # the same weight tensor, unchanged since (in-place updates bump _version)
        co, ci, kh, kw = w.shape
        box = w.new_full((1, 1, k, k), 1.0 / (k * k))
        wp = F.conv2d(F.pad(w.reshape(co * ci, 1, kh, kw), (k - 1,) * 4), box).view(co, ci, kh + k - 1, kw + k - 1)
        if not differentiable:
            self._pooled_weight = (weakref.ref(w), w._version, wp)
        return wp

    def coupling(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """Per-sample ``<s_out, P(W * s_in + b)>``, shape ``(B,)``.

        Args:
            s_in: the input layer's state, ``(B, *in_shape)``.
            s_out: the output layer's state, ``(B, *out_shape)``.
        """
        return (s_out * self.forward_drive(s_in)[0]).flatten(1).sum(1)


class SpikingLinear(nn.Module):
    """dense synapses -> Sigma-Delta neuron. Coupling: ``<s_out, W flatten(s_in) + b>``.

    Args:
        in_shape: the input layer's shape (any; flattened).
        features: output neurons (integer >= 1).
        threshold: the neuron's Sigma-Delta spike size, in units of the state (finite, >= 0; default 0: no spikes).
        graded: one graded spike a step carrying the whole rounded change (True, default), or at most one signed
            spike a step (False).
        spike_grad: snnTorch surrogate gradient of non-graded spikes in BPTT (None: ``snntorch.surrogate.atan()``).

    Raises:
        ValueError: ``features < 1`` or a bad ``threshold``.
    """

    def __init__(
        self,
        in_shape: Shape,
        features: int,
        threshold: float = 0.0,
        graded: bool = True,
        spike_grad: SpikeFunction | None = None,
    ) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"a dense block needs features >= 1, got {features}")
        self.in_shape = tuple(in_shape)
        self.linear = nn.Linear(math.prod(in_shape), features)
        self.out_shape: Shape = (features,)
        self.neuron = SigmaDelta(threshold, graded, spike_grad)

    def forward_drive(self, s_in: Tensor) -> tuple[Tensor, None]:
        """``W flatten(s_in) + b``, ``(B, features)``, and ``None`` (no pooling indices).

        Args:
            s_in: the input layer's (transmitted) state, ``(B, *in_shape)``.
        """
        return self.linear(s_in.flatten(1)), None

    def feedback(self, s_out: Tensor, indices: Tensor | None = None) -> Tensor:
        """``W^T s_out`` shaped ``(B, *in_shape)``: the gradient of the coupling with respect to ``s_in``.

        Args:
            s_out: the output layer's (transmitted) state, ``(B, features)``.
            indices: unused (no pooling); accepted so that every block has the same signature (default None).
        """
        return (s_out @ self.linear.weight).view(s_out.shape[0], *self.in_shape)

    def coupling(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """Per-sample ``<s_out, W flatten(s_in) + b>``, shape ``(B,)``.

        Args:
            s_in: the input layer's state, ``(B, *in_shape)``.
            s_out: the output layer's state, ``(B, features)``.
        """
        return (s_out * self.linear(s_in.flatten(1))).sum(1)

