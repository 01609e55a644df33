"""Activation diagnostics: the forward and backward routes of each conv layer in the nudged phase (the paper's
Figures 2 and 3)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor

from lightning_ep.blocks import SpikingConv2d
from lightning_ep.callbacks._checks import check_ep_module, check_every_n_steps
from lightning_ep.callbacks._logging import log_figure, log_scalars, new_figure
from lightning_ep.callbacks.neuromorphic_cost import spike_raster_figure
from lightning_ep.dynamics import NetworkState
from lightning_ep.module import EPLightningModule
from lightning_ep.network import ConvergentNetwork
from lightning_ep.neuromorphic import StepTrace, traced_free_phase, traced_nudged_phase

#: What is measured per conv layer: the per-sample sums of the two routes' outputs (statistics over the batch),
#: then the routes' inputs X and outputs Y (statistics over all their elements).
QUANTITIES = ("forward_sum", "backward_sum", "x_forward", "y_forward", "x_backward", "y_backward")


def conv_layers(net: ConvergentNetwork) -> list[int]:
    """Indices of the network's conv blocks."""
    return [i for i, b in enumerate(net.blocks) if isinstance(b, SpikingConv2d)]


@torch.no_grad()
def route_statistics(net: ConvergentNetwork, x: Tensor, state: NetworkState) -> Tensor:
    """Per conv block ``l`` (input ``X_fwd = r_{l-1}``, the input ``x`` for the first; output ``X_bwd = r_l``):
    the forward route ``Y_fwd = P(W * X_fwd + b)`` and the backward route ``Y_bwd = W^T *' P^T(X_bwd)`` (with the
    forward route's max-pooling indices), computed from what the layers transmit (``state.r``).

    Returns a float64 tensor (conv layers, len(QUANTITIES), 3) of [count, sum, sum of squares] for each quantity,
    so that statistics of several ranks add up (see ``mean_and_std``).

    Args:
        net: the convergent network.
        x: the batch of images the state was relaxed on.
        state: the network's state on that batch (what its layers transmit is read from ``state.r``).
    """
    rows = []
    for i in conv_layers(net):
        block = net.blocks[i]
        x_fwd = x if i == 0 else state.r[i - 1]
        x_bwd = state.r[i]
        y_fwd, indices = block.forward_drive(x_fwd)
        y_bwd = block.feedback(x_bwd, indices)
        values = (y_fwd.flatten(1).sum(1), y_bwd.flatten(1).sum(1), x_fwd, y_fwd, x_bwd, y_bwd)
        rows.append(torch.stack([_moments(v) for v in values]))
    return torch.stack(rows) if rows else torch.zeros(0, len(QUANTITIES), 3, dtype=torch.float64, device=x.device)


def mean_and_std(stats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) standard deviation from [count, sum, sum of squares] in the last dimension.

    Args:
        stats: moments as ``route_statistics`` returns them (summed over ranks where several).
    """
    n, s, s2 = stats.unbind(-1)
    mean = s / n
    var = (s2 - n * mean * mean) / (n - 1).clamp(min=1)
    return mean, var.clamp(min=0).sqrt()


def activation_figure(mean: np.ndarray, std: np.ndarray, layer_names: list[str], title: str) -> Figure:
    """Left: summed forward vs backward route per conv layer (mean over samples, std error bars). Right: mean and
    std of X_fwd, Y_fwd, X_bwd, Y_bwd per conv layer."""
    fig = new_figure(10, 4)
    ax_sum, ax_xy = fig.subplots(1, 2)
    pos = np.arange(len(layer_names))
    for k, label in enumerate(("forward route", "backward route")):
        ax_sum.bar(pos + (k - 0.5) * 0.38, mean[:, k], 0.38, yerr=std[:, k], capsize=3, label=label)
    ax_sum.set(xticks=pos, xticklabels=layer_names, ylabel="summed activation per sample",
               title="summed route activations (nudged phase)")
    width = 0.2
    for k, label in enumerate(("X forward", "Y forward", "X backward", "Y backward")):
        ax_xy.bar(pos + (k - 1.5) * width, mean[:, 2 + k], width, yerr=std[:, 2 + k], capsize=3, label=label)
    ax_xy.set(xticks=pos, xticklabels=layer_names, ylabel="activation (mean ± std over elements)",
              title="route inputs X and outputs Y")
    for ax in (ax_sum, ax_xy):
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


class ActivationDiagnostics(Callback):
    r"""Every ``every_n_steps`` optimizer steps (starting with the first) measure, for each conv layer, the forward
    and backward routes at the end of the nudged phase (``'positive'``, or ``'negative'`` when the estimator ran only
    that one) of the training step, on its batch, with the weights that step ran with (``on_before_optimizer_step``);
    the statistics are summed over DDP ranks.

    Logged scalars, ``l`` the conv layer (1 = next to the input): ``activations/conv<l>/<q>_mean`` and
    ``activations/conv<l>/<q>_std`` for ``q`` in ``forward_sum``, ``backward_sum`` (per-sample summed route outputs,
    over the samples: Figure 2) and ``x_forward``, ``y_forward``, ``x_backward``, ``y_backward`` (route inputs and
    outputs, over their elements: Figure 3). With ``plot``: ``activations/plot``, both as bar charts. Other steps
    cost one integer test. ``last`` holds the latest (mean, std) arrays (conv layers x ``QUANTITIES``), ``history``
    every measurement as (step, mean, std), kept in checkpoints (a resumed run continues it).

    With ``plot`` and ``raster`` (default) and a spiking network: ``activations/raster``, the spike raster and
    per-layer spike rates of the batch's first sample through the free phase and the nudged phases the step ran
    (re-run for that sample with a trace, the explicit dynamics and the step's weights; drawn with
    ``snntorch.spikeplot.raster`` where it imports, see ``spike_raster_figure``; up to ``raster_neurons``
    neurons per layer).

    Args:
        every_n_steps: measure every this many optimizer steps (integer >= 1; default 100); steps 0, n, 2n, ...
        plot: also log the bar charts ``activations/plot`` (rank 0).
        raster: with ``plot`` and a spiking network, also log the spike raster ``activations/raster`` (re-runs the
            phases of one sample with a trace).
        raster_neurons: neurons drawn per layer in the raster (integer >= 1; default 200).

    Raises:
        ValueError: ``every_n_steps < 1``; at fit, a module trained with ``method='bptt'`` or without conv layers.
        TypeError: at setup, a module that is not an ``EPLightningModule``.
    """

    def __init__(self, every_n_steps: int = 100, plot: bool = True, raster: bool = True,
                 raster_neurons: int = 200) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)
        self.plot = plot
        self.raster = raster
        if isinstance(raster_neurons, bool) or not isinstance(raster_neurons, int) or raster_neurons < 1:
            raise ValueError(f"raster_neurons must be an integer >= 1, got {raster_neurons!r}")
        self.raster_neurons = raster_neurons
        self.last: tuple[np.ndarray, np.ndarray] | None = None
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._batch: Any = None
        self._step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = check_ep_module(type(self).__name__, pl_module, stage, needs_ep=True)
        if not conv_layers(module.net):
            raise ValueError(f"{type(self).__name__} measures conv layers, but the network has none "
                             "(NetworkConfig(channels=())): remove the callback")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step
        self._batch = batch if self._step % self.every_n_steps == 0 else None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._batch is None:
            return
        (x, y), self._batch = self._batch[:2], None
        module = check_ep_module(type(self).__name__, pl_module, "fit", needs_ep=True)
        result = module.last_result
        if result is None:
            raise RuntimeError(f"{type(self).__name__}: the module kept no EP result of this step (last_result)")
        phase = result.phases["positive"] if "positive" in result.phases else result.phases["negative"]
        stats = trainer.strategy.reduce(route_statistics(module.net, x, phase.state), reduce_op="sum")
        mean, std = (t.cpu().numpy() for t in mean_and_std(stats))
        self.last = (mean, std)
        self.history.append((self._step, mean, std))
        metrics = {}
        for row in range(len(mean)):
            for col, q in enumerate(QUANTITIES):
                metrics[f"activations/conv{row + 1}/{q}_mean"] = float(mean[row, col])
                metrics[f"activations/conv{row + 1}/{q}_std"] = float(std[row, col])
        log_scalars(trainer, metrics, self._step)
        if self.plot and trainer.is_global_zero:
            names = [f"conv{layer}" for layer in range(1, len(mean) + 1)]
            title = f"step {self._step}, pooling {module.network_config.pooling}, threshold {module.net.threshold}"
            log_figure(trainer, "activations/plot", activation_figure(mean, std, names, title), self._step)
        if self.plot and self.raster and trainer.is_global_zero and module.net.spiking:
            traces = sample_traces(module, x[:1], y[:1], [name for name in result.phases if name != "free"])
            names = [f"layer{layer}" for layer in range(1, len(module.net.blocks) + 1)]
            title = f"spikes of one sample, step {self._step}, threshold {module.net.threshold}"
            fig = spike_raster_figure(traces, names, title, max_neurons=self.raster_neurons)
            log_figure(trainer, "activations/raster", fig, self._step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [(step, mean.tolist(), std.tolist()) for step, mean, std in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(step), np.asarray(mean), np.asarray(std)) for step, mean, std in state_dict["history"]]
        if self.history:
            self.last = self.history[-1][1:]


def sample_traces(module: EPLightningModule, x: Tensor, y: Tensor, nudged: list[str]) -> dict[str, StepTrace]:
    """Traces (every neuron's spikes, first sample) of the free phase and the ``nudged`` phases (``'positive'``,
    ``'negative'``) of ``x``, ``y`` with the module's settings."""
    phases, beta = module.phases, module.ep.beta
    free, free_trace = traced_free_phase(module.net, x, phases.t1, phases.update, phases.tol, phases.start,
                                         phases.omega, 1)
    traces = {"free": free_trace}
    for name in nudged:
        strength = beta if name == "positive" else -beta
        traces[name] = traced_nudged_phase(module.net, x, y, free.state, phases.t2, strength, phases.update, phases.tol,
                                           phases.omega, 1)[1]
    return traces


def _moments(v: Tensor) -> Tensor:
    v = v.detach().double()
    return torch.stack([v.new_tensor(float(v.numel())), v.sum(), v.pow(2).sum()])
