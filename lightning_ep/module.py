"""``EPLightningModule``: trains a convergent spiking network with Equilibrium Propagation (or BPTT) in Lightning.

Manual optimization: ``training_step`` runs the free, +beta and -beta phases, calls ``manual_backward`` on the EP
surrogate (so DDP all-reduces the EP gradient like any other), clips, steps the optimizer and the LR scheduler.
Validation and test run the free phase only, without autograd (they work under Lightning's inference mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_ep.bptt import bptt_loss
from lightning_ep.dynamics import START_KINDS, Relaxation, check_omega
from lightning_ep.ep import EPResult, check_ep_args, equilibrium_propagation, free_phase
from lightning_ep.network import Conv, ConvergentNetwork, Dense, LossKind

Method = Literal["ep", "bptt"]


class EPLightningModule(LightningModule):
    """A conv + dense convergent network (spiking when ``threshold > 0``) trained by EP or BPTT.

    Network: ``channels``/``kernel_size``/``padding``/``pooling`` per conv layer, ``hidden`` dense widths, then
    ``num_classes`` outputs (``loss='mse'``: an output layer nudged to one-hot; ``'ce'``: a linear read-out).
    Training: ``method`` 'ep' (phases of ``t1``/``t2`` steps, ``beta``, ``estimator``) or 'bptt' (through the
    ``t1`` free steps of the same dynamics). ``eval_t1`` free steps for validation/test (default ``t1``). Every free
    phase starts from ``start``: zeros, or a feed-forward sweep (``'feedforward'``). ``omega``: the relaxation factor
    of every update (1: plain block-coordinate descent; in (1, 2): over-relaxation).
    ``layer_lrs`` gives one learning rate per block (input side first; the read-out last with 'ce').
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 5,
        padding: int = 0,
        pooling: Literal["avg", "max", "none"] = "avg",
        hidden: Sequence[int] = (512,),
        loss: LossKind = "mse",
        threshold: float = 0.0,
        graded: bool = True,
        method: Method = "ep",
        beta: float = 0.2,
        t1: int = 40,
        t2: int = 15,
        eval_t1: int | None = None,
        estimator: Literal["symmetric", "one_sided", "random_sign"] = "symmetric",
        update: Literal["async", "sync"] = "async",
        dynamics: Literal["explicit", "autograd"] = "explicit",
        tol: float | None = None,
        start: Literal["zeros", "feedforward"] = "zeros",
        omega: float = 1.0,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        layer_lrs: Sequence[float] | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "none"] = "cosine",
        gradient_clip_val: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        layers: list[Conv | Dense] = [Conv(c, kernel_size, padding, pooling) for c in channels]
        layers += [Dense(h) for h in hidden]
        self.net = ConvergentNetwork(input_shape, layers, num_classes, loss, threshold, graded)
        if method not in ("ep", "bptt"):
            raise ValueError(f"unknown method {method!r}: use 'ep' or 'bptt'")
        check_ep_args(self.net, beta, t1, t2, estimator)
        check_omega(omega)
        if start not in START_KINDS:
            raise ValueError(f"unknown start {start!r}: use one of {START_KINDS}")
        if eval_t1 is not None and eval_t1 < 1:
            raise ValueError(f"eval_t1 must be >= 1 or None, got {eval_t1}")
        if optimizer not in ("adam", "sgd") or scheduler not in ("cosine", "none"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd' and scheduler 'cosine' or 'none', got "
                             f"{optimizer!r}, {scheduler!r}")
        groups = self._param_groups()
        if layer_lrs is not None and len(layer_lrs) != len(groups):
            raise ValueError(f"layer_lrs needs one learning rate per block ({len(groups)}), got {len(layer_lrs)}")
        if lr <= 0 or (layer_lrs is not None and min(layer_lrs) <= 0):
            raise ValueError("learning rates must be > 0")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}")
        self._generator: torch.Generator | None = None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.last_result: EPResult | None = None

    @property
    def generator(self) -> torch.Generator:
        """The random-sign estimator's generator, seeded with ``seed`` (its state travels in checkpoints)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.hparams.seed)
        return self._generator

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not pickle through torch.multiprocessing (ddp_spawn): send its state instead.
        state = self.__dict__.copy()
        generator = state.pop("_generator")
        state["_generator_state"] = generator.get_state() if generator is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_generator_state", None)
        super().__setstate__({**state, "_generator": None})
        if generator_state is not None:
            self.generator.set_state(generator_state)

    # -- optimisation ---------------------------------------------------------------------------------------
    def _param_groups(self) -> list[list[torch.nn.Parameter]]:
        groups = [list(b.parameters()) for b in self.net.blocks]
        if self.net.readout is not None:
            groups.append(list(self.net.readout.parameters()))
        return groups

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        lrs = list(hp.layer_lrs) if hp.layer_lrs is not None else [hp.lr] * len(self._param_groups())
        groups = [{"params": p, "lr": lr} for p, lr in zip(self._param_groups(), lrs, strict=True)]
        if hp.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(groups, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(groups, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def run_ep(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> EPResult:
        """The EP phases on a batch with this module's settings (``generator``: for the random-sign estimator,
        default the module's own)."""
        hp = self.hparams
        return equilibrium_propagation(
            self.net, x, y, hp.beta, hp.t1, hp.t2, hp.estimator, hp["update"], hp.dynamics, hp.tol,
            generator or self.generator, hp.start, hp.omega,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hp = self.hparams
        if hp.method == "ep":
            res = self.run_ep(x, y)
            self.last_result = res
            objective, logits, loss, phases = res.surrogate, res.logits, res.loss, res.phases
        else:
            out = bptt_loss(self.net, x, y, hp.t1, hp["update"], hp.start, hp.omega)
            objective, logits, loss, phases = out.loss, out.logits.detach(), out.loss.detach(), {"free": out.free}
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(objective)
        if hp.gradient_clip_val is not None:
            self.clip_gradients(opt, gradient_clip_val=hp.gradient_clip_val, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self._log_phases("train", phases, len(y))
        return loss

    # -- evaluation -----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits after the free phase (``eval_t1`` steps, no autograd)."""
        self.net.check_input(x)
        return self.net.logits(self._free(x).state.s)

    def _free(self, x: Tensor) -> Relaxation:
        hp = self.hparams
        return free_phase(self.net, x, hp.eval_t1 or hp.t1, hp["update"], "explicit", hp.tol, hp.start, hp.omega)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = batch
        self.net.check_input(x, y)
        free = self._free(x)
        loss = self.net.loss(free.state.s, y).mean()
        metric(self.net.logits(free.state.s), y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=len(y))
        self._log_phases(stage, {"free": free}, len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).argmax(1)

    # -- logging and checkpoints ----------------------------------------------------------------------------
    def _log_phases(self, stage: str, phases: dict[str, Relaxation], batch: int) -> None:
        """How far each phase converged (its last step's largest and mean state change), its steps, and the spike
        rate per layer (spikes per neuron per step, in the free phase)."""
        on_step = stage == "train"
        for name, phase in phases.items():
            self.log(f"{stage}/change_{name}", phase.last_change, on_step=on_step, on_epoch=True, sync_dist=True,
                     batch_size=batch)
            self.log(f"{stage}/mean_change_{name}", phase.mean_change, on_step=on_step, on_epoch=True,
                     sync_dist=True, batch_size=batch)
            if self.hparams.tol is not None:
                self.log(f"{stage}/steps_{name}", float(phase.steps), on_step=on_step, on_epoch=True, sync_dist=True,
                         batch_size=batch)
        if self.net.spiking:
            free = phases["free"]
            for i, (count, shape) in enumerate(zip(free.spikes, self.net.state_shapes, strict=True)):
                rate = count / (batch * free.steps * torch.Size(shape).numel())
                self.log(f"{stage}/spike_rate_layer{i + 1}", rate, on_step=on_step, on_epoch=True, sync_dist=True,
                         batch_size=batch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ep_generator_state"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ep_generator_state" in checkpoint:
            self.generator.set_state(checkpoint["ep_generator_state"])
