"""Memory monitor: what a training step holds for backward (any device) and its CUDA peak, optionally against one
BPTT step of the same network on the same batch."""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor

from lightning_ep.bptt import bptt_loss
from lightning_ep.callbacks._checks import check_ep_module, check_every_n_steps, check_t1
from lightning_ep.callbacks._logging import log_figure, log_scalars, new_figure
from lightning_ep.dynamics import UpdateOrder
from lightning_ep.memory import SavedBytes, count_saved_bytes, cuda_peak_bytes, reset_cuda_peak
from lightning_ep.network import ConvergentNetwork

MIB = 2.0**20


def bptt_memory(
    net: ConvergentNetwork, x: Tensor, y: Tensor, t1: int, update: UpdateOrder, cuda_peak: bool = False
) -> tuple[int, int | None]:
    """Bytes saved for backward by one BPTT loss (``t1`` free steps) and, with ``cuda_peak``, the CUDA peak of that
    forward and its backward (``torch.autograd.grad``, ``p.grad`` untouched) above the memory allocated before.

    Args:
        net: the convergent network.
        x: a batch of images.
        y: their class labels.
        t1: free-phase steps to backpropagate through.
        update: the update order of the free phase ('async' or 'sync').
        cuda_peak: also measure the CUDA peak (``x`` on a CUDA device).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    baseline = reset_cuda_peak(x.device) if cuda_peak else 0
    with torch.enable_grad(), count_saved_bytes() as saved:
        loss = bptt_loss(net, x, y, t1, update).loss
    if not cuda_peak:
        return saved.bytes, None
    torch.autograd.grad(loss, params, allow_unused=True)
    del loss
    return saved.bytes, cuda_peak_bytes(x.device) - baseline


def memory_figure(values: dict[str, dict[str, float]], title: str) -> Figure:
    """Bars of each measure (``values[measure][method]`` in bytes, methods 'EP' and 'BPTT'), in MiB, with the
    EP / BPTT ratio."""
    fig = new_figure(3.2 + 2.2 * len(values), 4)
    axes = np.atleast_1d(fig.subplots(1, len(values)))
    for ax, (measure, by_method) in zip(axes, values.items(), strict=True):
        names = list(by_method)
        mib = [by_method[n] / MIB for n in names]
        bars = ax.bar(names, mib, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[f"{v:.3g} MiB" for v in mib], fontsize=8)
        ax.set(ylabel="MiB", title=measure)
        if "EP" in by_method and "BPTT" in by_method and by_method["BPTT"] > 0:
            ax.set_xlabel(f"EP / BPTT = {by_method['EP'] / by_method['BPTT']:.3g}")
        ax.margins(y=0.15)
    fig.suptitle(title)
    return fig


class MemoryMonitor(Callback):
    r"""Every ``every_n_steps`` optimizer steps (starting with the first) measure the memory of the training step.

    * Saved bytes (any device, deterministic): the bytes of the distinct storages autograd saves for backward during
      the step's forward (``lightning_ep.memory.count_saved_bytes``, active from ``on_train_batch_start`` to
      ``on_before_backward``); parameters and inputs that the graph keeps count too. For EP this is the surrogate's
      one-step graph (the phases run without autograd); for BPTT, every step of the free phase.
    * CUDA peak (CUDA only): ``max_memory_allocated`` from ``on_train_batch_start`` to ``on_before_optimizer_step``
      (forward and backward, not the optimizer step) minus the memory allocated at its start.

    With ``compare_bptt``, the same measures for one BPTT loss of the same network on the same batch (``bptt_t1``
    free steps, default the module's ``t1``; rank-local, run at ``on_train_batch_end``, its gradient by
    ``torch.autograd.grad`` so ``p.grad`` is untouched). Other steps cost one integer test.

    Cost: counting the saved bytes costs nothing measurable. With ``compare_bptt`` each measured step also runs a
    BPTT forward (and backward on CUDA) through ``bptt_t1`` steps and holds its graph until it ends: measured on
    CPU (2C2FC, hidden 256, spiking, batch 64), 0.5x an EP step at T1 10 / T2 8 and 0.7x at T1 40 / T2 15, with
    the memory of that graph on top (BPTT saves T1 times a step's states). The memory of a step does not change
    during training (same shapes), so the default measures every 500 steps: step 0, then under 0.2 % of the
    training time. ``every_n_steps=1`` measures every step, at nearly twice the step time with ``compare_bptt``.

    Logged scalars, ``m`` the module's ``method`` (``ep`` or ``bptt``): ``memory/<m>_saved_bytes``,
    ``memory/<m>_peak_bytes`` (CUDA); with ``compare_bptt``: ``memory/bptt_saved_bytes``, ``memory/ep_over_bptt``
    (saved-bytes ratio), and on CUDA ``memory/bptt_peak_bytes``, ``memory/ep_over_bptt_peak``. With ``plot``, at the
    end of training: ``memory/plot``, a bar chart of the last measurement. ``last`` holds it as a dict.

    Args:
        every_n_steps: measure every this many optimizer steps (integer >= 1; default 500); steps 0, n, 2n, ...
        compare_bptt: also measure one BPTT loss of the same network on the same batch (modules trained by EP only).
        bptt_t1: free steps of that BPTT loss (integer >= 1), or None (default) for the module's ``t1``.
        plot: log the bar chart ``memory/plot`` of the last measurement at the end of training (rank 0).

    Raises:
        ValueError: ``every_n_steps < 1`` or ``bptt_t1 < 1``; at fit, ``compare_bptt`` with ``method='bptt'``.
        TypeError: at setup, a module that is not an ``EPLightningModule``.
    """

    def __init__(
        self, every_n_steps: int = 500, compare_bptt: bool = False, bptt_t1: int | None = None, plot: bool = True
    ) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)
        self.compare_bptt = compare_bptt
        self.bptt_t1 = check_t1(bptt_t1)
        self.plot = plot
        self.last: dict[str, float] = {}
        self._stack: ExitStack | None = None
        self._saved: SavedBytes | None = None
        self._batch: Any = None
        self._baseline: int | None = None
        self._peak: int | None = None
        self._step = self._last_step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = check_ep_module(type(self).__name__, pl_module, stage, needs_ep=False)
        if self.compare_bptt and stage == "fit" and module.method != "ep":
            raise ValueError(f"{type(self).__name__}(compare_bptt=True) compares EP with BPTT, but the module "
                             f"already trains with method={module.method!r}: set compare_bptt=False")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step
        if self._step % self.every_n_steps != 0:
            return
        self._close()
        self._batch = batch if self.compare_bptt else None
        self._peak = None
        self._baseline = reset_cuda_peak(pl_module.device) if _is_cuda(pl_module.device) else None
        self._stack = ExitStack()
        self._saved = self._stack.enter_context(count_saved_bytes())

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._close()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._baseline is not None and self._peak is None:
            self._peak = cuda_peak_bytes(pl_module.device) - self._baseline

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._saved is None:
            return
        self._close()
        module = check_ep_module(type(self).__name__, pl_module, "fit", needs_ep=False)
        method = module.method
        metrics: dict[str, float] = {f"memory/{method}_saved_bytes": float(self._saved.bytes)}
        if self._baseline is not None:
            peak = self._peak if self._peak is not None else cuda_peak_bytes(module.device) - self._baseline
            metrics[f"memory/{method}_peak_bytes"] = float(peak)
        if self._batch is not None:
            x, y = self._batch[0], self._batch[1]
            phases = module.phases
            saved, peak = bptt_memory(module.net, x, y, self.bptt_t1 or phases.t1, phases.update,
                                      self._baseline is not None)
            metrics["memory/bptt_saved_bytes"] = float(saved)
            metrics["memory/ep_over_bptt"] = metrics["memory/ep_saved_bytes"] / saved if saved else math.nan
            if peak is not None:
                metrics["memory/bptt_peak_bytes"] = float(peak)
                metrics["memory/ep_over_bptt_peak"] = metrics["memory/ep_peak_bytes"] / peak if peak else math.nan
        self._saved, self._batch, self._baseline, self._peak = None, None, None, None
        self.last, self._last_step = metrics, self._step
        log_scalars(trainer, metrics, self._step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.plot and self.last and trainer.is_global_zero):
            return
        values: dict[str, dict[str, float]] = {}
        for key, value in self.last.items():
            method, _, measure = key.removeprefix("memory/").partition("_")
            if measure in ("saved_bytes", "peak_bytes"):
                label = "saved for backward" if measure == "saved_bytes" else "CUDA peak (fwd + bwd)"
                values.setdefault(label, {})[method.upper()] = value
        t1 = pl_module.phases.t1
        title = f"memory of training step {self._last_step} (t1={t1}, BPTT t1={self.bptt_t1 or t1})"
        log_figure(trainer, "memory/plot", memory_figure(values, title), self._last_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        """Leave the saved-tensors hooks (they are thread-local and must not outlive the step's forward)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"
