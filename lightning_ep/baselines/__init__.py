"""Baselines to compare EP with: snnTorch's convolutional SNN trained by BPTT through time."""

from lightning_ep.baselines.csnn import CSNNRun, SnnTorchCSNN, SnnTorchSurrogate

__all__ = ["CSNNRun", "SnnTorchCSNN", "SnnTorchSurrogate"]
