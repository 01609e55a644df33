"""Sigma-Delta spiking neuron: a delta-encoder at the sender, a sigma-decoder at the receivers.

The sender keeps ``r``, the value its receivers hold. Each step it emits the change ``s - r`` as signed spikes of
size ``threshold`` and both sides add what was sent to ``r``; receivers compute with ``r``, never with ``s``.
``threshold == 0`` is the non-spiking network (``r = s``): spiking is this one switch, not a second code path.
The neuron keeps no state of its own (unlike snnTorch's ``mem`` buffers): ``r`` is passed in and returned.

Dithering (graded spikes, a ``torch.Generator`` passed per call): the spike count is rounded stochastically,
``floor((s - r) / threshold + u)`` with ``u ~ U[0, 1)``, so what the receivers hold equals the state in
expectation (deterministic rounding is off by up to ``threshold / 2`` at a fixed point). The caller owns the
generator (its seed and its state), so the neuron stays stateless.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from snntorch import surrogate as snn_surrogate
from torch import Tensor, nn

SpikeFunction = Callable[[Tensor], Tensor]
_DEFAULT_SPIKE_GRAD: SpikeFunction = snn_surrogate.atan()


def round_straight_through(q: Tensor) -> Tensor:
    """``round(q)`` forward, identity backward (straight-through estimator)."""
    return q + (torch.round(q) - q).detach()


def dithered_round(q: Tensor, generator: torch.Generator) -> Tensor:
    """``floor(q + u)``, ``u ~ U[0, 1)`` from ``generator``: rounds up with probability ``frac(q)``, so its
    expectation is ``q``. Identity backward (straight-through)."""
    u = torch.rand(q.shape, generator=generator, device=q.device, dtype=q.dtype)
    if not torch.is_grad_enabled():
        return u.add_(q).floor_()
    return q + (torch.floor(q + u) - q).detach()


class SigmaDelta(nn.Module):
    """Sigma-Delta encoder/decoder pair for one layer's signal.

    Args:
        threshold: spike size, in units of the state (finite, >= 0; default 0); 0 disables spiking (receivers then
            see the exact state).
        graded: emit the whole rounded change ``round((s - r) / threshold)`` as one graded spike a step
            (``|s - r| <= threshold / 2`` after every step); otherwise at most one signed spike a step.
        spike_grad: snnTorch surrogate for the spike nonlinearity in BPTT (default ``snntorch.surrogate.atan()``);
            graded spikes use the straight-through estimator.

    Raises:
        ValueError: a negative, NaN or infinite ``threshold``.
    """

    def __init__(self, threshold: float = 0.0, graded: bool = True, spike_grad: SpikeFunction | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.graded = graded
        self.spike_grad = spike_grad  # None: snnTorch's atan, looked up at call time so the module pickles

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not (value >= 0.0 and value < float("inf")):
            raise ValueError(f"threshold must be a finite number >= 0 (0 disables spiking), got {value}")
        self._threshold = float(value)

    @property
    def spiking(self) -> bool:
        return self._threshold > 0.0

    def forward(
        self, s: Tensor, r: Tensor | None, dither: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Encode ``s`` against the receivers' value ``r``; returns the new ``r`` and the signed spike counts
        (``None`` when not spiking). ``r=None`` means the receivers hold zeros. ``dither``: a generator for
        stochastic rounding of graded spikes (see the module docstring); ``None`` rounds to the nearest count."""
        if not self.spiking:
            return s, None
        if dither is not None:
            if not self.graded:
                raise ValueError("dithering rounds the graded spike count: use graded=True with dither")
            q = dithered_round((s if r is None else s - r) / self._threshold, dither)
            sent = q * self._threshold
            return (sent if r is None else r + sent), q
        if self.graded and not torch.is_grad_enabled():
            # the same arithmetic in fewer passes, for the phases that run without autograd
            q = (s.clone() if r is None else torch.sub(s, r)).div_(self._threshold).round_()
            return (q * self._threshold if r is None else torch.add(r, q, alpha=self._threshold)), q
        delta = s if r is None else s - r
        q = delta / self._threshold
        if self.graded:
            spikes = round_straight_through(q)
        else:
            spike = self.spike_grad or _DEFAULT_SPIKE_GRAD
            spikes = (spike(q - 0.5) - spike(-q - 0.5)).to(q.dtype)
        sent = spikes * self._threshold
        return (sent if r is None else r + sent), spikes

    def extra_repr(self) -> str:
        return f"threshold={self._threshold}, graded={self.graded}"
