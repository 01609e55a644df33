"""Baselines to compare EP with: snnTorch's convolutional SNN trained by BPTT through time, and its neuromorphic
cost counted as the convergent network's."""

from lightning_ep.baselines.csnn import CSNNRun, SnnTorchCSNN, SnnTorchSurrogate
from lightning_ep.baselines.csnn_cost import csnn_accuracy_at_steps, csnn_cost, csnn_fan_out, csnn_input_macs

__all__ = ["CSNNRun", "SnnTorchCSNN", "SnnTorchSurrogate", "csnn_accuracy_at_steps", "csnn_cost", "csnn_fan_out",
           "csnn_input_macs"]
