"""Lightning callbacks that look inside EP training: memory against BPTT, gradient alignment with BPTT, and the
forward/backward route activations of the conv layers. They work with any logger (W&B and TensorBoard get images
natively; other loggers, or none, get PNG/CSV files under ``<log dir>/plots/``)."""

from lightning_ep.callbacks.activation_diagnostics import ActivationDiagnostics, mean_and_std, route_statistics
from lightning_ep.callbacks.gradient_alignment import GradientAlignment, bptt_gradients, cosine_and_norm_ratio
from lightning_ep.callbacks.memory_monitor import MemoryMonitor, bptt_memory
from lightning_ep.callbacks.neuromorphic_cost import NeuromorphicCostMonitor, spike_raster_figure

__all__ = [
    "ActivationDiagnostics",
    "GradientAlignment",
    "MemoryMonitor",
    "NeuromorphicCostMonitor",
    "bptt_gradients",
    "bptt_memory",
    "cosine_and_norm_ratio",
    "mean_and_std",
    "route_statistics",
    "spike_raster_figure",
]
