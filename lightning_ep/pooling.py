"""Pooling of a conv layer's drive and its adjoint (the inverse route that carries feedback back)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

PoolingKind = Literal["avg", "max", "none"]
POOLING_KINDS: tuple[str, ...] = ("avg", "max", "none")


def check_pooling(kind: str | None) -> PoolingKind:
    """Return the pooling kind, or raise a ValueError naming the allowed ones."""
    kind = "none" if kind is None else kind
    if kind not in POOLING_KINDS:
        raise ValueError(f"unknown pooling {kind!r}: use one of {POOLING_KINDS} (None means 'none')")
    return kind  # type: ignore[return-value]


def pool(u: Tensor, kind: PoolingKind, size: int) -> tuple[Tensor, Tensor | None]:
    """Pool ``u`` (B, C, H, W); returns the pooled tensor and, for max pooling, the argmax indices. (Average
    pooling is folded into the convolution: ``SpikingConv2d.avg_pooled_weight``.)"""
    if kind == "avg":
        return F.avg_pool2d(u, size), None
    if kind == "max":
        return F.max_pool2d(u, size, return_indices=True)
    return u, None


def pool_adjoint(v: Tensor, kind: PoolingKind, size: int, indices: Tensor | None, out_hw: tuple[int, int]) -> Tensor:
    """The adjoint of ``pool`` at the forward point for max pooling (max-unpooling at the forward indices) and
    no pooling. ``out_hw`` is the unpooled height, width. Average pooling's adjoint (nearest-neighbour upsampling
    / size²) is the strided transpose of the folded convolution in ``SpikingConv2d``."""
    if kind == "none":
        return v
    if kind == "max":
        if indices is None:
            raise ValueError("max pooling's adjoint needs the indices of the forward pooling")
        return F.max_unpool2d(v, indices, size, output_size=out_hw)
    raise ValueError("average pooling is folded into the convolution: use SpikingConv2d.feedback")


def pooled_hw(hw: tuple[int, int], kind: PoolingKind, size: int) -> tuple[int, int]:
    """Spatial size after pooling (floor, as PyTorch's pooling does)."""
    if kind == "none":
        return hw
    return hw[0] // size, hw[1] // size
