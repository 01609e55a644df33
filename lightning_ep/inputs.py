"""The batches users actually have, made into what the network takes: ``(images, labels)`` with float images in
[0, 1].

- A batch is a tuple or list ``(images, labels, ...)``, a dict with an image key and a label key (see
  ``IMAGE_KEYS`` / ``LABEL_KEYS``), or, for prediction, the images alone.
- ``uint8`` images (raw pixels 0..255) are divided by 255.
- Float images must be about unit scale (scaled to [0, 1], or standardised): any value beyond
  ``MAX_FLOAT_MAGNITUDE`` raises, since pixels in 0..255 saturate every state and train to chance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

IMAGE_KEYS = ("image", "images", "input", "inputs", "x", "pixel_values")
"""The keys under which a dict batch may hold its images, tried in this order (the first present is used)."""
LABEL_KEYS = ("label", "labels", "target", "targets", "y")
"""The keys under which a dict batch may hold its labels (class indices), tried in this order."""
MAX_FLOAT_MAGNITUDE = 4.0  # standardised MNIST-like images reach about 3; raw pixels reach 255
"""The largest absolute value a float image may hold (unit scale: [0, 1] or standardised); beyond it, a ValueError."""


def _pick(batch: Mapping[str, Any], keys: tuple[str, ...], what: str, required: bool) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    if required:
        raise ValueError(f"a dict batch needs {what} under one of the keys {keys}, got keys {sorted(batch)}: rename "
                         "them in your Dataset/collate_fn, or return (image, label) tuples")
    return None


def unpack_batch(batch: Any, labels_required: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(images, labels)`` of a tuple/list or dict batch (labels ``None`` when not required and absent).

    Args:
        batch: a tuple or list ``(images, labels, ...)`` (further items ignored), a dict with a key of ``IMAGE_KEYS``
            and one of ``LABEL_KEYS``, or (labels not required) the images alone: a tensor or a 1-tuple.
        labels_required: raise a ValueError when the batch has no labels (default True; False for prediction).
    """
    if isinstance(batch, Mapping):
        return _pick(batch, IMAGE_KEYS, "the images", True), _pick(batch, LABEL_KEYS, "the labels", labels_required)
    if isinstance(batch, list | tuple):
        if len(batch) >= 2:
            return batch[0], batch[1]
        if len(batch) == 1 and not labels_required:
            return batch[0], None
        raise ValueError(f"a batch must be (images, labels), got a {type(batch).__name__} of {len(batch)} items")
    if isinstance(batch, Tensor) and not labels_required:
        return batch, None
    raise ValueError(f"a batch must be (images, labels) or a dict with 'image' and 'label' keys, got "
                     f"{type(batch).__name__}")


def prepare_images(x: Any, dtype: torch.dtype) -> Tensor:
    """``x`` as float images of ``dtype``: ``uint8`` pixels divided by 255, float ones checked to be about unit
    scale.

    Args:
        x: the images, a ``torch.Tensor`` of ``uint8`` pixels (0..255) or of floats within
            ``±MAX_FLOAT_MAGNITUDE`` ([0, 1] or standardised); anything else raises a ValueError.
        dtype: the floating-point dtype of the result (e.g. ``torch.float32``).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    if not x.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 pixels (0..255) or floats scaled to [0, 1], got {x.dtype}: convert "
                         "them, e.g. x.float() / 255")
    if x.numel():
        largest = x.detach().abs().max()
        if torch.isfinite(largest) and largest > MAX_FLOAT_MAGNITUDE:
            raise ValueError(f"float images must be scaled to [0, 1] (or standardised), got values up to "
                             f"{largest.item():.4g}: divide raw pixels by 255 (or pass them as uint8, which is "
                             "divided for you)")
    return x.to(dtype)
