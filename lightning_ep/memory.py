"""Measuring memory: the bytes autograd saves for backward (deterministic, any device) and the CUDA peak."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SavedBytes:
    """Filled by ``count_saved_bytes``: the bytes of distinct storages autograd saved for backward."""

    bytes: int = 0
    tensors: int = 0


@contextmanager
def count_saved_bytes() -> Iterator[SavedBytes]:
    """Count, deduplicated by storage, the bytes of every tensor autograd saves for backward inside the block.
    Parameters and inputs that autograd keeps a reference to are counted too."""
    result = SavedBytes()
    seen: set[tuple[torch.device, int]] = set()

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            result.bytes += storage.nbytes()
            result.tensors += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


def cuda_peak_bytes(device: torch.device) -> int:
    """Peak allocated bytes on a CUDA device since the last ``reset_cuda_peak``."""
    return int(torch.cuda.max_memory_allocated(device))


def reset_cuda_peak(device: torch.device) -> int:
    """Reset the CUDA peak counter; returns the bytes allocated now (the baseline)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return int(torch.cuda.memory_allocated(device))

