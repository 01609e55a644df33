"""Gradient alignment: how close the EP gradient is to the BPTT gradient of the same network on the same batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn

from lightning_ep.bptt import bptt_loss
from lightning_ep.callbacks._checks import check_ep_module, check_every_n_steps, check_t1
from lightning_ep.callbacks._logging import log_figure, log_scalars, log_table, new_figure
from lightning_ep.dynamics import StartKind, UpdateOrder
from lightning_ep.network import ConvergentNetwork


def cosine_and_norm_ratio(ep: Tensor, bptt: Tensor) -> tuple[float, float]:
    """``cos(ep, bptt)`` and ``|ep| / |bptt|`` of two gradients (flattened); NaN where a norm is zero.

    Args:
        ep: the EP gradient (any shape).
        bptt: the BPTT gradient it is compared with (as many elements).
    """
    a, b = ep.detach().flatten().double(), bptt.detach().flatten().double()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return math.nan, (math.nan if nb == 0.0 else 0.0)
    return float(a @ b) / (na * nb), na / nb


def bptt_gradients(
    net: ConvergentNetwork,
    x: Tensor,
    y: Tensor,
    params: Sequence[nn.Parameter],
    t1: int,
    update: UpdateOrder,
    start: StartKind = "zeros",
    omega: float = 1.0,
) -> list[Tensor]:
    """The BPTT gradient of the mean loss after ``t1`` free steps from ``start`` (relaxation factor ``omega``), by
    ``torch.autograd.grad``: ``p.grad`` and any DDP reducer hooks are left untouched. Parameters the loss does not
    reach get zeros.

    Args:
        net: the convergent network.
        x: a batch of images.
        y: their class labels.
        params: the parameters to differentiate (one gradient each, in this order).
        t1: free-phase steps to backpropagate through.
        update: the update order of the free phase ('async' or 'sync').
        start: the state the free phase starts from ('zeros' or 'feedforward').
        omega: relaxation factor of every update.
    """
    with torch.enable_grad():
        loss = bptt_loss(net, x, y, t1, update, start, omega).loss
        return _grads(loss, params)


def _grads(objective: Tensor, params: Sequence[nn.Parameter]) -> list[Tensor]:
    grads = torch.autograd.grad(objective, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def validation_loaders(trainer: pl.Trainer) -> Any:
    """The validation dataloader(s) given to ``fit`` (directly, by the datamodule or by the module), also before
    Lightning has loaded them itself (it does so lazily, at the first validation)."""
    if trainer.val_dataloaders is not None:
        return trainer.val_dataloaders
    source = trainer.fit_loop.epoch_loop.val_loop._data_source  # what fit() was given; Lightning has no public handle
    if not source.is_defined():
        raise ValueError("GradientAlignment(held_out=...) needs validation data: pass val_dataloaders to fit(), or "
                         "a datamodule or module with val_dataloader()")
    return source.dataloader()


def first_batch(loader: Any, size: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` samples of a dataloader (or of the first of a list of them), as one batch."""
    if isinstance(loader, list | tuple):
        if not loader:
            raise ValueError("GradientAlignment(held_out=...) needs validation data, and there is none")
        loader = loader[0]
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= size:
            break
    if n < size:
        raise ValueError(f"GradientAlignment(held_out={size}) needs {size} validation samples, the data has {n}")
    return torch.cat(xs)[:size], torch.cat(ys)[:size]


def alignment_figure(steps: Sequence[int], history: dict[str, list[tuple[float, float]]]) -> Figure:
    """Cosine and norm ratio of each parameter tensor over training: a colour per layer, weights solid, biases
    dashed."""
    fig = new_figure(12, 4)
    ax_cos, ax_ratio = fig.subplots(1, 2)
    layers = sorted({name.rsplit(".", 2)[0] for name in history})
    colors = {layer: f"C{i % 10}" for i, layer in enumerate(layers)}
    marker = "o" if len(steps) < 30 else None
    for name, values in history.items():
        style = {"color": colors[name.rsplit(".", 2)[0]], "linestyle": "--" if name.endswith("bias") else "-",
                 "marker": marker, "markersize": 3}
        ax_cos.plot(steps, [v[0] for v in values], label=name, **style)
        ax_ratio.plot(steps, [v[1] for v in values], label=name, **style)
    ax_cos.set(xlabel="step", ylabel="cos(EP, BPTT)", title="gradient cosine per parameter tensor")
    ax_ratio.set(xlabel="step", ylabel="|EP| / |BPTT|", title="gradient norm ratio per parameter tensor")
    ax_ratio.axhline(1.0, color="grey", linewidth=0.8)
    for ax in (ax_cos, ax_ratio):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*ax_cos.get_legend_handles_labels(), loc="outside right center", fontsize=7)
    return fig


class GradientAlignment(Callback):
    r"""Every ``every_n_steps`` optimizer steps (starting with the first, at fit start) compare the EP gradient of
    the training step with the BPTT gradient of the same network on the same batch.

    The EP gradient is ``p.grad`` right after ``manual_backward`` (``on_after_backward``: already averaged across
    DDP ranks, not yet clipped, unscaled if AMP scaled it). The BPTT gradient (``bptt_t1`` free steps, default the
    module's ``t1``, the module's update order and start) is computed on each rank's batch with
    ``torch.autograd.grad`` and averaged across ranks with ``trainer.strategy.reduce`` before the comparison.
    With ``held_out=n`` both gradients are taken instead on one fixed batch: the first ``n`` samples of the
    validation data (never trained on; the same batch at every measurement, so the curve follows the network, not
    the batches), EP by the module's own phases (``p.grad`` untouched; the random-sign estimator draws from a
    generator of its own). With ``bptt_spiking=False`` the BPTT gradient is that of the same network without
    spikes (threshold 0): at a spiking fixed point the straight-through BPTT gradient can grow without bound with
    the steps (the quantised state stays put where the unquantised dynamics would move on), while the non-spiking
    one at its settled state is the gradient the spiking EP estimate aims at. Other steps cost one integer test.

    Logged scalars (step = the optimizer step being taken): ``alignment/cos/<param>``,
    ``alignment/norm_ratio/<param>`` (``|EP| / |BPTT|``) for each parameter tensor of ``pl_module.net``,
    ``alignment/cos_mean`` (their mean), ``alignment/cos_all`` and ``alignment/norm_ratio_all`` (all parameters as
    one vector). With ``plot``, at every measurement: ``alignment/plot`` (both quantities over training, a line per
    tensor) and ``alignment/table`` (this measurement, a row per tensor); see ``lightning_ep.callbacks._logging``
    for where they go with each logger. ``history`` keeps every measurement.

    Args:
        every_n_steps: measure every this many optimizer steps (integer >= 1; default 100); steps 0, n, 2n, ...
        bptt_t1: free steps of the BPTT reference (integer >= 1), or None (default) for the module's ``t1``.
        plot: also log the figure ``alignment/plot`` and the table ``alignment/table`` at every measurement (rank 0).
        held_out: measure both gradients on the first this many validation samples (integer >= 1) instead of the
            training batch; None (default) uses the training step's own batch and gradient.
        bptt_spiking: take the BPTT gradient of the spiking network (True, default) or of the same network without
            spikes (False: threshold 0 for the reference only).

    Raises:
        ValueError: ``every_n_steps < 1`` or ``bptt_t1 < 1``; at fit, a module trained with ``method='bptt'``, or
            one with ``accumulate_grad_batches > 1`` without ``held_out``.
        TypeError: at setup, a module that is not an ``EPLightningModule``.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        bptt_t1: int | None = None,
        plot: bool = True,
        held_out: int | None = None,
        bptt_spiking: bool = True,
    ) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)
        self.bptt_t1 = check_t1(bptt_t1)
        self.bptt_spiking = bptt_spiking
        if held_out is not None and (isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 1):
            raise ValueError(f"held_out must be a number of validation samples >= 1 or None, got {held_out!r}")
        self.held_out = held_out
        self._held_out_batch: tuple[Tensor, Tensor] | None = None
        self.plot = plot
        self.steps: list[int] = []
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.all_cosines: list[float] = []
        self._batch: Any = None
        self._step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = check_ep_module(type(self).__name__, pl_module, stage, needs_ep=True)
        if stage == "fit" and self.held_out is None and module.optim.accumulate_grad_batches > 1:
            raise ValueError(f"{type(self).__name__} reads the training step's gradient, which "
                             "accumulate_grad_batches > 1 mixes over several batches: pass held_out=<samples> to "
                             "measure on a fixed validation batch instead")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step
        self._batch = batch if self._step % self.every_n_steps == 0 else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.held_out is not None and self._held_out_batch is None:
            x, y = first_batch(validation_loaders(trainer), self.held_out)
            x = trainer.precision_plugin.convert_input(x)  # as Lightning converts the batches (e.g. 64-true)
            self._held_out_batch = (x.to(pl_module.device), y.to(pl_module.device))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None:
            return
        (x, y), self._batch = self._batch, None
        module = check_ep_module(type(self).__name__, pl_module, "fit", needs_ep=True)
        named = [(n, p) for n, p in module.net.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        phases = module.phases
        if self._held_out_batch is not None:
            x, y = self._held_out_batch
            with torch.enable_grad():
                ep = _grads(module.run_ep(x, y, torch.Generator().manual_seed(self._step),
                                           torch.Generator(module.device).manual_seed(self._step)).surrogate, params)
            ep = self._mean_over_ranks(trainer, ep, params)
        else:
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            unscale = 1.0 / float(scaler.get_scale()) if scaler is not None else 1.0
            ep = [(torch.zeros_like(p) if p.grad is None else p.grad.detach()) * unscale for p in params]
        threshold = module.net.threshold
        if not self.bptt_spiking:
            module.net.threshold = 0.0  # the same network without spikes, for this gradient only
        try:
            bptt = bptt_gradients(module.net, x, y, params, self.bptt_t1 or phases.t1, phases.update,
                                  phases.start, phases.omega)
        finally:
            module.net.threshold = threshold
        self._record(trainer, names, ep, self._mean_over_ranks(trainer, bptt, params))

    @staticmethod
    def _mean_over_ranks(trainer: pl.Trainer, grads: list[Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        flat = trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
        return [g.view_as(p) for g, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]

    def _record(self, trainer: pl.Trainer, names: list[str], ep: list[Tensor], bptt: list[Tensor]) -> None:
        metrics: dict[str, float] = {}
        rows = []
        self.steps.append(self._step)
        for name, g_ep, g_bptt in zip(names, ep, bptt, strict=True):
            cos, ratio = cosine_and_norm_ratio(g_ep, g_bptt)
            metrics[f"alignment/cos/{name}"], metrics[f"alignment/norm_ratio/{name}"] = cos, ratio
            self.history.setdefault(name, []).append((cos, ratio))
            rows.append([name, str(tuple(g_ep.shape)), cos, ratio, float(g_ep.norm()), float(g_bptt.norm())])
        cosines = [r[2] for r in rows if not math.isnan(r[2])]
        metrics["alignment/cos_mean"] = sum(cosines) / len(cosines) if cosines else math.nan
        all_cos, all_ratio = cosine_and_norm_ratio(torch.cat([g.flatten() for g in ep]),
                                                   torch.cat([g.flatten() for g in bptt]))
        metrics["alignment/cos_all"], metrics["alignment/norm_ratio_all"] = all_cos, all_ratio
        self.all_cosines.append(all_cos)
        log_scalars(trainer, metrics, self._step)
        if self.plot and trainer.is_global_zero:
            log_figure(trainer, "alignment/plot", alignment_figure(self.steps, self.history), self._step)
            columns = ["parameter", "shape", "cosine", "norm_ratio", "ep_norm", "bptt_norm"]
            log_table(trainer, "alignment/table", columns, rows, self._step)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "history": {k: list(v) for k, v in self.history.items()},
                "all_cosines": list(self.all_cosines)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict["steps"])
        self.history = {k: [tuple(v) for v in vs] for k, vs in state_dict["history"].items()}
        self.all_cosines = list(state_dict.get("all_cosines", []))
