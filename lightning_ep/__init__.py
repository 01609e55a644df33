"""lightning_ep: Equilibrium Propagation for convolutional spiking convergent networks."""

from typing import TYPE_CHECKING

from lightning_ep.blocks import SpikingConv2d, SpikingLinear
from lightning_ep.bptt import BPTTResult, bptt_loss, nudged_bptt_loss
from lightning_ep.config import BPTTConfig, CurvatureConfig, EPConfig, NetworkConfig, PhasesConfig
from lightning_ep.dynamics import DivergenceError, NetworkState, Relaxation, relax, relax_autograd
from lightning_ep.ep import EPResult, equilibrium_propagation
from lightning_ep.network import Conv, ConvergentNetwork, Dense, two_conv_two_dense
from lightning_ep.neuromorphic import (
    NeuromorphicCost,
    StepTrace,
    latency_steps,
    phase_cost,
    trace_cost,
    traced_free_phase,
    training_step_cost,
)
from lightning_ep.optimization import OptimConfig
from lightning_ep.phases import free_phase
from lightning_ep.sigma_delta import SigmaDelta
from lightning_ep.stability import active_coupling_eigenvalue

if TYPE_CHECKING:
    # Seen by type checkers and IDEs only: at runtime ``__getattr__`` below imports it on first use.
    from lightning_ep.module import EPLightningModule

__all__ = [
    "BPTTConfig",
    "BPTTResult",
    "Conv",
    "ConvergentNetwork",
    "CurvatureConfig",
    "Dense",
    "DivergenceError",
    "EPConfig",
    "EPLightningModule",
    "EPResult",
    "NetworkConfig",
    "NetworkState",
    "NeuromorphicCost",
    "OptimConfig",
    "PhasesConfig",
    "Relaxation",
    "SigmaDelta",
    "SpikingConv2d",
    "SpikingLinear",
    "StepTrace",
    "active_coupling_eigenvalue",
    "bptt_loss",
    "equilibrium_propagation",
    "free_phase",
    "latency_steps",
    "nudged_bptt_loss",
    "phase_cost",
    "relax",
    "relax_autograd",
    "trace_cost",
    "traced_free_phase",
    "training_step_cost",
    "two_conv_two_dense",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``EPLightningModule`` is imported on first use, so the plain-PyTorch engine does not import Lightning."""
    if name == "EPLightningModule":
        from lightning_ep.module import EPLightningModule

        return EPLightningModule
    raise AttributeError(f"module 'lightning_ep' has no attribute {name!r}")
