"""Neuromorphic cost: spikes, synaptic operations (SynOps), the dense network's MACs and latency, logged for
training steps and per sample in validation and test; and the spike raster of one sample's phases."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor

from lightning_ep.callbacks._checks import check_ep_module, check_every_n_steps
from lightning_ep.callbacks._logging import log_scalars, new_figure
from lightning_ep.module import EPLightningModule
from lightning_ep.neuromorphic import (
    NeuromorphicCost,
    StepTrace,
    phase_cost,
    trace_cost,
    traced_free_phase,
    training_step_cost,
)

RasterFunction = Callable[..., Any]
RASTER_DOT = 8.0  # dot area (points^2) of one spike in the raster
#: Sums over the samples re-run with a trace: their number, latency, exact SynOps, events and event SynOps.
TRACED = ("samples", "latency", "synops_exact", "events", "event_synops")
"""The sums kept from the traced re-runs: samples re-run, then the per-sample quantities summed over them."""


def _publish(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` to every logger (rank zero) and put them in ``trainer.callback_metrics`` (every rank), where
    ModelCheckpoint and EarlyStopping look for their monitored key, as Lightning's LearningRateMonitor does.

    Args:
        trainer: the running Trainer.
        metrics: the scalars by name.
        step: the step the loggers record them at.
    """
    log_scalars(trainer, metrics, step)
    device = trainer.strategy.root_device
    trainer.callback_metrics.update({name: torch.tensor(value, device=device) for name, value in metrics.items()})


def _traced_sums(cost: NeuromorphicCost | None) -> list[float]:
    if cost is None or cost.latency is None or cost.events is None or cost.event_synops is None:
        return [0.0] * len(TRACED)
    return [float(cost.samples), float(cost.latency.double().sum()), cost.total_synops, sum(cost.events),
            sum(cost.event_synops)]


def _matplotlib_raster(data: Tensor, ax: Any, **kwargs: Any) -> Any:
    """``snntorch.spikeplot.raster``'s drawing: a scatter of the nonzero entries of (time, neurons) ``data``."""
    if data.dim() == 1:
        data = data.unsqueeze(1)
    return ax.scatter(*torch.where(data.cpu()), **kwargs)


def raster_function() -> tuple[RasterFunction, str]:
    """``snntorch.spikeplot.raster`` and its name, or the same drawing in plain matplotlib where ``spikeplot`` does
    not import (it needs pandas, which snnTorch does not install)."""
    try:
        from snntorch import spikeplot
    except ImportError:
        return _matplotlib_raster, "matplotlib"
    return spikeplot.raster, "snntorch.spikeplot"


def spike_raster_figure(
    traces: Mapping[str, StepTrace], layer_names: Sequence[str], title: str, sample: int = 0, max_neurons: int = 200
) -> Figure:
    """One raster per layer (x: the step, the phases of ``traces`` one after another; step 0 is the start, with the
    feed-forward sweep's spikes when the first phase recorded one; y: up to ``max_neurons`` evenly spaced neurons)
    and, below, each layer's spikes per neuron per step. Signed graded spikes: red dots where the state went up
    (q > 0), blue where it went down (q < 0), dot area proportional to the count ``|q|``.

    Args:
        traces: the recorded phases by name, in the order they ran.
        layer_names: one name per layer, for the panel titles.
        title: the figure's title.
        sample: which sample of the batch to draw.
        max_neurons: at most this many neurons per layer are drawn.
    """
    raster, backend = raster_function()
    phases = {}
    for i, (name, trace) in enumerate(traces.items()):
        rows = trace.raster_of(sample)
        if i == 0 and not trace.swept:  # an empty step 0, so that x is the step number
            rows = [torch.cat([torch.zeros_like(r[:1]), r]) for r in rows]
        phases[name] = rows
    n_layers = len(layer_names)
    per_layer = [torch.cat([rows[layer] for rows in phases.values()]).cpu() for layer in range(n_layers)]
    fig = new_figure(10, 1.5 * n_layers + 2.5)
    axes = fig.subplots(n_layers + 1, 1, sharex=True, height_ratios=[1.0] * n_layers + [1.3])
    for ax, name, data in zip(axes[:-1], layer_names, per_layer, strict=True):
        keep = torch.linspace(0, data.shape[1] - 1, min(data.shape[1], max_neurons)).round().long().unique()
        shown = data[:, keep]
        for sign, color in ((1.0, "tab:red"), (-1.0, "tab:blue")):
            counts = (sign * shown).clamp(min=0.0)
            if counts.any():
                raster(counts, ax, s=RASTER_DOT * counts[counts > 0].numpy(), c=color, marker="o", linewidths=0)
        ax.set_ylim(-1, len(keep))
        ax.set_ylabel(f"{name}\n({len(keep)}/{data.shape[1]})", fontsize=8)
    rate_ax = axes[-1]
    for name, data in zip(layer_names, per_layer, strict=True):
        rate_ax.plot(np.arange(len(data)), data.abs().sum(1).numpy() / data.shape[1], label=name)
    rate_ax.set(xlabel="step", ylabel="spikes / neuron / step")
    rate_ax.legend(fontsize=7, ncols=min(n_layers, 4))
    start = 0
    for name, rows in phases.items():
        for ax in axes:
            ax.axvline(start - 0.5, color="grey", linewidth=0.7)
        axes[0].text(start, 1.02, name, transform=axes[0].get_xaxis_transform(), fontsize=8)
        start += len(rows[0]) if rows else 0
    fig.suptitle(f"{title}\nred: +spikes, blue: -spikes, area ~ graded count ({backend})", fontsize=9)
    return fig


class NeuromorphicCostMonitor(Callback):
    r"""Logs what the network would cost on neuromorphic hardware (see ``lightning_ep.neuromorphic`` for exactly what
    is counted): spikes, SynOps (each spike times its fan-out, forward and feedback), the MACs of the same network run
    dense for the same steps, their ratio, and the latency (steps until the prediction stops changing).

    * Training, every ``every_n_steps`` optimizer steps (starting with the first; modules trained by EP): the whole
      step, its free and nudged phases (``pl_module.last_result``), per training sample, rank-local.
    * Validation and test: the free phase of every batch (``pl_module.last_free``), per sample, summed over DDP
      ranks at the end of the epoch.

    Latency needs the prediction after every step, which the module does not keep: this callback re-runs the free
    phase with a ``StepTrace`` on the first ``traced_samples`` samples of each
    measured training batch (before the step, with its weights) and of each validation/test epoch on each rank (0:
    no re-runs, no latency). The re-run also gives the exact SynOps (``synops_exact``: each neuron's spikes times its
    own fan-out); the per-batch ``synops`` of conv layers use the layer's mean fan-out (border neurons reach fewer
    outputs). The re-runs use the explicit dynamics, whatever the module's ``dynamics``.

    Logged, ``<stage>`` in ``train``, ``val``, ``test``, ``l`` the state layer (1 = next to the input), per sample:
    ``<stage>/cost/spikes[_layer<l>]``, ``…/synops[_layer<l>]``, ``…/dense_macs[_layer<l>]``,
    ``…/synops_per_dense_mac``, ``…/input_macs`` (the dense drive from the image, in both networks),
    ``…/readout_macs`` (``loss='ce'``); from the re-runs ``…/latency`` (mean steps), ``…/synops_exact``,
    ``…/events`` and ``…/event_synops`` (graded spikes as one message each; training: ``…_free``, the free
    phase's). Training also logs ``train/cost/synops_<phase>`` for ``free``, ``positive``, ``negative`` (the phases
    it ran; ``free`` is the cost of an inference). ``last`` holds the latest metrics of each stage.

    Args:
        every_n_steps: measure the training step every this many optimizer steps (integer >= 1; default 50);
            validation and test are measured on every batch.
        traced_samples: samples re-run with a trace per measured training batch and per validation/test epoch and
            rank (integer >= 0; default 64; 0: no re-runs, so no latency and no exact SynOps).

    Raises:
        ValueError: ``every_n_steps < 1`` or ``traced_samples < 0``.
        TypeError: at setup, a module that is not an ``EPLightningModule``.
    """

    def __init__(self, every_n_steps: int = 50, traced_samples: int = 64) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)
        if isinstance(traced_samples, bool) or not isinstance(traced_samples, int) or traced_samples < 0:
            raise ValueError(f"traced_samples must be an integer >= 0, got {traced_samples!r}")
        self.traced_samples = traced_samples
        self.last: dict[str, dict[str, float]] = {}
        self._train_trace: NeuromorphicCost | None = None
        self._measured_step = -1
        self._measure = False
        self._sums: dict[str, Tensor] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_ep_module(type(self).__name__, pl_module, stage, needs_ep=False)

    # -- training ------------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        self._measure = step % self.every_n_steps == 0 and step != self._measured_step  # once a step (accumulation)
        if not self._measure:
            return
        self._measured_step = step
        module = check_ep_module(type(self).__name__, pl_module, "fit", needs_ep=False)
        if module.method != "ep":  # a BPTT step keeps no phases to count
            self._measure = False
            return
        self._train_trace = self._traced(module, batch[0][: self.traced_samples], eval_steps=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._measure:
            return
        self._measure = False
        module = check_ep_module(type(self).__name__, pl_module, "fit", needs_ep=False)
        result = module.last_result
        if module.method != "ep" or result is None:
            return
        feedforward = module.phases.start == "feedforward"
        metrics = training_step_cost(module.net, result, feedforward).metrics("train/cost")
        for name, phase in result.phases.items():
            cost = phase_cost(module.net, phase, feedforward and name == "free", nudged=name != "free")
            metrics[f"train/cost/synops_{name}"] = cost.total_synops / max(cost.samples, 1)
        traced = dict(zip(TRACED, _traced_sums(self._train_trace), strict=True))
        if traced["samples"] > 0:
            for name in TRACED[1:]:  # the free phase's, re-run: latency, synops_exact_free, events_free, ...
                key = name if name == "latency" else f"{name}_free"
                metrics[f"train/cost/{key}"] = traced[name] / traced["samples"]
        self._train_trace = None
        self.last["train"] = metrics
        _publish(trainer, metrics, self._measured_step)

    # -- validation and test -------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums.pop("val", None)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums.pop("test", None)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._accumulate("val", pl_module, batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate("test", pl_module, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_epoch("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_epoch("test", trainer, pl_module)

    def _accumulate(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        """Add the batch's free-phase cost (and, while the epoch's budget lasts, a traced re-run) to the sums:
        [samples, spikes, synops, dense MACs (per layer each), input MACs, read-out MACs, *TRACED]."""
        module = check_ep_module(type(self).__name__, pl_module, stage, needs_ep=False)
        free = module.last_free
        if free is None:
            raise RuntimeError(f"{type(self).__name__}: the module kept no free phase of this batch (last_free)")
        cost = phase_cost(module.net, free, module.phases.start == "feedforward")
        sums = self._sums.get(stage)
        traced_so_far = 0 if sums is None else int(sums[-len(TRACED)])
        traced = None
        if traced_so_far < self.traced_samples:
            traced = self._traced(module, batch[0][: self.traced_samples - traced_so_far], eval_steps=True)
        row = torch.tensor([cost.samples, *cost.spikes, *cost.synops, *cost.dense_macs, cost.input_macs,
                            cost.readout_macs, *_traced_sums(traced)], dtype=torch.float64)
        self._sums[stage] = row if sums is None else sums + row

    def _log_epoch(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sums = self._sums.pop(stage, None)
        module = check_ep_module(type(self).__name__, pl_module, stage, needs_ep=False)
        n_layers = len(module.net.blocks)
        if sums is None:
            sums = torch.zeros(3 * n_layers + 3 + len(TRACED), dtype=torch.float64)
        sums = trainer.strategy.reduce(sums.to(module.device), reduce_op="sum").cpu()  # every rank takes part
        if sums[0] == 0:
            return
        values = sums.tolist()
        spikes, synops, dense = (values[1 + k * n_layers: 1 + (k + 1) * n_layers] for k in range(3))
        input_sum, readout_sum = values[3 * n_layers + 1: 3 * n_layers + 3]
        cost = NeuromorphicCost(int(values[0]), 0, spikes, synops, dense, input_sum, readout_sum)
        metrics = cost.metrics(f"{stage}/cost")
        traced = dict(zip(TRACED, values[-len(TRACED):], strict=True))
        if traced["samples"] > 0:
            for name in TRACED[1:]:
                metrics[f"{stage}/cost/{name}"] = traced[name] / traced["samples"]
        self.last[stage] = metrics
        _publish(trainer, metrics, trainer.global_step)

    # -- traced re-runs ------------------------------------------------------------------------------------------
    def _traced(self, module: EPLightningModule, x: Tensor, eval_steps: bool) -> NeuromorphicCost | None:
        """The free phase of ``x`` re-run with a trace (the module's settings; ``eval_t1`` steps for evaluation)."""
        if len(x) == 0:
            return None
        phases = module.phases
        steps = phases.evaluation_steps if eval_steps else phases.t1
        _, trace = traced_free_phase(module.net, x, steps, phases.update, phases.tol, phases.start, phases.omega)
        return trace_cost(module.net, trace)

    def state_dict(self) -> dict[str, Any]:
        return {"last": {k: dict(v) for k, v in self.last.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last = {k: dict(v) for k, v in state_dict.get("last", {}).items()}
