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
    """Pool ``u`` (B, C, H, W); returns the pooled tensor and, for max pooling, the argmax indices."""
    if kind == "avg":
        return F.avg_pool2d(u, size), None
    if kind == "max":
        return F.max_pool2d(u, size, return_indices=True)
    return u, None


def pool_adjoint(v: Tensor, kind: PoolingKind, size: int, indices: Tensor | None, out_hw: tuple[int, int]) -> Tensor:
    """The adjoint of :func:`pool` at the forward point: nearest-neighbour upsampling / size² for average
    pooling, max-unpooling at the forward indices for max pooling. ``out_hw`` is the unpooled height, width."""
    if kind == "none":
        return v
    if kind == "max":
        if indices is None:
            raise ValueError("max pooling's adjoint needs the indices of the forward pooling")
        return F.max_unpool2d(v, indices, size, output_size=out_hw)
    b, c, h, w = v.shape
    up = v[:, :, :, None, :, None].expand(b, c, h, size, w, size).reshape(b, c, h * size, w * size)
    up = up * (1.0 / (size * size))
    pad_h, pad_w = out_hw[0] - h * size, out_hw[1] - w * size
    if pad_h or pad_w:
        up = F.pad(up, (0, pad_w, 0, pad_h))
    return up


def pooled_hw(hw: tuple[int, int], kind: PoolingKind, size: int) -> tuple[int, int]:
    """Spatial size after pooling (floor, as PyTorch's pooling does)."""
    if kind == "none":
        return hw
    return hw[0] // size, hw[1] // size
