"""``EPLightningModule``: trains a convergent spiking network with Equilibrium Propagation (or BPTT) in Lightning.

Manual optimization: ``training_step`` runs the free, +beta and -beta phases, calls ``manual_backward`` on the EP
surrogate (so DDP all-reduces the EP gradient like any other), clips, steps the optimizer and the LR scheduler.
Validation and test run the free phase only, without autograd (they work under Lightning's inference mode).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_ep.bptt import BPTTResult, bptt_loss, draw_nudges, nudged_bptt_loss
from lightning_ep.data.sampler import MidEpochResume
from lightning_ep.distributed import DestroyProcessGroupAtExit
from lightning_ep.dynamics import START_KINDS, Relaxation, check_omega
from lightning_ep.ep import EPResult, check_ep_args, equilibrium_propagation, free_phase
from lightning_ep.network import Conv, ConvergentNetwork, Dense, LossKind
from lightning_ep.stability import CURVATURE_SAMPLES, check_quadratic, curvature_penalty

Method = Literal["ep", "bptt"]
BPTTObjective = Literal["nudged", "free"]


class EPLightningModule(LightningModule):
    """A conv + dense convergent network (spiking when ``threshold > 0``) trained by EP or BPTT.

    Network, one of: ``network``, a built :class:`ConvergentNetwork` (then ``input_shape``, ``num_classes``,
    ``loss``, ``threshold`` and the layer arguments come from it; it is not a hyperparameter, so pass it again to
    ``load_from_checkpoint``); ``layers``, a per-layer stack of :class:`Conv` / :class:`Dense` specs; or the 2C2FC
    shortcut: ``channels``/``kernel_size``/``padding``/``pooling`` for every conv layer and ``hidden`` dense
    widths. Then ``num_classes`` outputs (``loss='mse'``: an output layer nudged to one-hot; ``'ce'``: a linear
    read-out).
    Training: ``method`` 'ep' (phases of ``t1``/``t2`` steps, ``beta``, ``estimator``) or 'bptt' through the same
    dynamics, of ``bptt_objective`` 'nudged' (EP's objective, the loss after ``t2`` steps nudged at a strength
    drawn uniformly from [-beta, beta] per sample, from the free state after ``t1`` steps, backpropagated through
    the nudged steps, which run at omega 1; ``lightning_ep.bptt``) or 'free' (the loss after the ``t1`` free steps,
    through all of them or only their last ``bptt_truncate``); by default 'free' with ``bptt_truncate``, else
    'nudged'. ``eval_t1`` free steps for
    validation/test (default ``t1``). Every free phase starts from ``start``: zeros, or a feed-forward sweep
    (``'feedforward'``). ``omega``: the relaxation factor of every update (1: plain block-coordinate descent; in
    (1, 2): over-relaxation). ``dither``: dithered Sigma-Delta in EP's training phases (stochastic rounding of the
    spike counts, the same random stream for both nudged phases; the generator is seeded with ``seed`` and
    checkpointed); validation, test and prediction round deterministically. ``average_last``: EP evaluates the
    energy at the states averaged over the last that many steps of each nudged phase. ``curvature_bound``: adds
    ``curvature_weight`` times a penalty on the training samples whose free state is too close to a saddle of the
    energy (largest eigenvalue of the coupling over the active units above the bound, on the first
    ``CURVATURE_SAMPLES`` samples of each batch; ``lightning_ep.stability``), so that the relaxation stays a fast
    contraction as the weights grow; average pooling or none. ``curvature_iters`` power-iteration rounds estimate
    each eigenvalue, from below (a Rayleigh quotient): too few miss samples above the bound.
    Optimisation: ``optimizer`` 'adam' / 'sgd' (with ``lr``, ``weight_decay``, ``momentum``) or a factory that
    takes the parameter groups (``OptimizerCallable``: ``torch.optim.AdamW``, ``functools.partial``, or
    ``class_path``/``init_args`` in a LightningCLI config); ``layer_lrs`` gives one learning rate per block (input
    side first; the read-out last with 'ce'). ``scheduler`` 'cosine' (to 0 over the run, every step), 'none', or a
    factory that takes the optimizer (``LRSchedulerCallable``), stepped every ``scheduler_interval``.
    Lightning's ``Trainer(gradient_clip_val=..., accumulate_grad_batches=...)`` do not apply under manual
    optimization: use ``gradient_clip_val`` (norm clipping of the EP gradient) and ``accumulate_grad_batches`` here.
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
        layers: Sequence[Conv | Dense] | None = None,
        network: ConvergentNetwork | None = None,
        loss: LossKind = "mse",
        threshold: float = 0.0,
        graded: bool = True,
        method: Method = "ep",
        beta: float = 0.2,
        t1: int = 40,
        t2: int = 15,
        eval_t1: int | None = None,
        bptt_objective: BPTTObjective | None = None,
        bptt_truncate: int | None = None,
        estimator: Literal["symmetric", "one_sided", "random_sign"] = "symmetric",
        update: Literal["async", "sync"] = "async",
        dynamics: Literal["explicit", "autograd"] = "explicit",
        tol: float | None = None,
        start: Literal["zeros", "feedforward"] = "zeros",
        omega: float = 1.0,
        dither: bool = False,
        average_last: int = 0,
        curvature_bound: float | None = None,
        curvature_weight: float = 1.0,
        curvature_iters: int = 30,
        optimizer: Literal["adam", "sgd"] | OptimizerCallable = "adam",
        lr: float = 1e-3,
        layer_lrs: Sequence[float] | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "none"] | LRSchedulerCallable = "cosine",
        scheduler_interval: Literal["step", "epoch"] = "step",
        gradient_clip_val: float | None = None,
        accumulate_grad_batches: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.automatic_optimization = False
        self.net = network if network is not None else self._build_network(
            input_shape, num_classes, channels, kernel_size, padding, pooling, hidden, layers, loss, threshold, graded)
        if method not in ("ep", "bptt"):
            raise ValueError(f"unknown method {method!r}: use 'ep' or 'bptt'")
        check_ep_args(self.net, beta, t1, t2, estimator, average_last, tol)
        check_omega(omega)
        if start not in START_KINDS:
            raise ValueError(f"unknown start {start!r}: use one of {START_KINDS}")
        if eval_t1 is not None and eval_t1 < 1:
            raise ValueError(f"eval_t1 must be >= 1 or None, got {eval_t1}")
        if dither and (method != "ep" or not self.net.spiking or not self.net.blocks[0].neuron.graded):
            raise ValueError("dither (stochastic rounding of the graded Sigma-Delta spike counts) needs method='ep', "
                             "threshold > 0 and graded=True")
        if curvature_bound is not None:
            if not curvature_bound > 0 or not curvature_weight > 0:
                raise ValueError(f"curvature_bound and curvature_weight must be > 0, got {curvature_bound} and "
                                 f"{curvature_weight}")
            if curvature_iters < 1:
                raise ValueError(f"curvature_iters (power-iteration rounds) must be >= 1, got {curvature_iters}")
            try:
                check_quadratic(self.net)
            except ValueError as err:
                raise ValueError(f"curvature_bound: {err}") from err
        if bptt_objective is None:  # (so checkpoints of truncated BPTT from before this argument load as they ran)
            bptt_objective = "free" if bptt_truncate is not None else "nudged"
            self.hparams.bptt_objective = bptt_objective
        if bptt_objective not in ("nudged", "free"):
            raise ValueError(f"unknown bptt_objective {bptt_objective!r}: use 'nudged' or 'free'")
        if bptt_truncate is not None and (method != "bptt" or bptt_objective != "free"
                                          or not 1 <= bptt_truncate <= t1):
            raise ValueError(f"bptt_truncate (the last free steps BPTT goes through) needs method='bptt', "
                             f"bptt_objective='free' and 1 <= bptt_truncate <= t1 ({t1}), got {bptt_truncate} with "
                             f"method={method!r}, bptt_objective={bptt_objective!r}")
        self._check_optimisation(optimizer, scheduler, scheduler_interval, weight_decay, momentum)
        # The objects themselves (under LightningCLI, hparams hold their class_path/init_args instead).
        self._optimizer = optimizer
        self._scheduler = scheduler
        groups = self._param_groups()
        if layer_lrs is not None and len(layer_lrs) != len(groups):
            raise ValueError(f"layer_lrs needs one learning rate per block ({len(groups)}), got {len(layer_lrs)}")
        if lr <= 0 or (layer_lrs is not None and min(layer_lrs) <= 0):
            raise ValueError("learning rates must be > 0")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self._generator: torch.Generator | None = None
        self._dither: torch.Generator | None = None  # the dither generator last used (on the module's device then)
        self._dither_states: dict[str, Tensor] = {}  # kept states by device type: a checkpoint's, or a left device's
        self.train_acc = MulticlassAccuracy(self.net.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.net.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.net.num_classes, average="micro")
        self.last_result: EPResult | None = None  # the last training batch's EP phases (for callbacks)
        self.last_free: Relaxation | None = None  # the last validation/test batch's free phase (for callbacks)

    @staticmethod
    def _build_network(
        input_shape: Sequence[int], num_classes: int, channels: Sequence[int], kernel_size: int, padding: int,
        pooling: str, hidden: Sequence[int], layers: Sequence[Conv | Dense] | None, loss: LossKind,
        threshold: float, graded: bool,
    ) -> ConvergentNetwork:
        """The per-layer ``layers`` stack when given, else the uniform conv stack plus ``hidden`` dense layers."""
        if layers is None:
            layers = [Conv(c, kernel_size, padding, pooling) for c in channels]
            layers += [Dense(h) for h in hidden]
        return ConvergentNetwork(input_shape, list(layers), num_classes, loss, threshold, graded)

    @staticmethod
    def _check_optimisation(
        optimizer: object, scheduler: object, interval: str, weight_decay: float, momentum: float
    ) -> None:
        """Raise a ValueError for an unknown optimizer / scheduler, or for arguments a factory would ignore."""
        if not callable(optimizer) and optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {optimizer!r}: use 'adam', 'sgd' or an optimizer factory "
                             "(e.g. torch.optim.AdamW, or class_path/init_args in a config)")
        if not callable(scheduler) and scheduler not in ("cosine", "none"):
            raise ValueError(f"unknown scheduler {scheduler!r}: use 'cosine', 'none' or a scheduler factory "
                             "(e.g. functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10))")
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {interval!r}")
        if callable(optimizer) and (weight_decay != 0.0 or momentum != 0.9):
            raise ValueError("weight_decay and momentum apply to optimizer='adam'/'sgd' only: with an optimizer "
                             "factory, give them to the factory (init_args) instead")

    @property
    def generator(self) -> torch.Generator:
        """The generator of the random-sign estimator (EP) or of the nudge strengths (nudged BPTT), seeded with
        ``seed`` (its state travels in checkpoints)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.hparams.seed)
        return self._generator

    @property
    def dither_generator(self) -> torch.Generator | None:
        """The generator of dithered Sigma-Delta on this module's device (``None`` unless ``dither``), seeded with
        ``seed``. Its state travels in checkpoints and is kept when the module moves to another device and back
        (Lightning moves it to the CPU after a GPU fit); a generator cannot move across device types, so a state
        saved on another type (a CUDA checkpoint resumed on the CPU) is not continued: reseeded, with a warning."""
        if not self.hparams.get("dither", False):
            return None
        if self._dither is not None and self._dither.device == self.device:
            return self._dither
        if self._dither is not None:
            self._dither_states[self._dither.device.type] = self._dither.get_state()
        generator = torch.Generator(self.device).manual_seed(self.hparams.seed)
        state = self._dither_states.pop(self.device.type, None)
        if state is not None:
            generator.set_state(state)
        elif self._dither_states:
            warnings.warn(f"the dither generator's state was saved on {sorted(self._dither_states)}, not on "
                          f"{self.device.type}: the generator is reseeded with seed={self.hparams.seed}", stacklevel=2)
        self._dither = generator
        return generator

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not pickle through torch.multiprocessing (ddp_spawn): send its state instead.
        state = self.__dict__.copy()
        generator = state.pop("_generator")
        state["_generator_state"] = generator.get_state() if generator is not None else None
        dither = state.pop("_dither")
        if dither is not None:
            state["_dither_states"] = {**state["_dither_states"], dither.device.type: dither.get_state()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_generator_state", None)
        super().__setstate__({**state, "_generator": None, "_dither": None})
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
        params = self._param_groups()
        if callable(self._optimizer):
            # A factory keeps its own learning rate unless layer_lrs sets one per block.
            lrs = list(hp.layer_lrs) if hp.layer_lrs is not None else [None] * len(params)
            groups = [{"params": p} if lr is None else {"params": p, "lr": lr}
                      for p, lr in zip(params, lrs, strict=True)]
            opt: torch.optim.Optimizer = self._optimizer(groups)
        else:
            lrs = list(hp.layer_lrs) if hp.layer_lrs is not None else [hp.lr] * len(params)
            groups = [{"params": p, "lr": lr} for p, lr in zip(params, lrs, strict=True)]
            if self._optimizer == "adam":
                opt = torch.optim.Adam(groups, weight_decay=hp.weight_decay)
            else:
                opt = torch.optim.SGD(groups, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if self._scheduler == "none":
            return opt
        if callable(self._scheduler):
            sched = self._scheduler(opt)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            if hp.scheduler_interval == "epoch":
                total = max(1, int(self.trainer.max_epochs or 1))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("ReduceLROnPlateau needs a monitored metric, which manual optimization does not pass: "
                             "use a step/epoch scheduler (e.g. cosine, StepLR)")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.scheduler_interval}}

    def configure_callbacks(self) -> list[Any]:
        """``MidEpochResume`` (a run cut mid-epoch resumes at its next batch) and ``DestroyProcessGroupAtExit``;
        refuses the Trainer's clipping / accumulation (manual optimization) with the module argument to use instead
        (this hook runs before Lightning's own, less specific, refusal)."""
        trainer = self.trainer
        if trainer.state.fn == "fit":
            if trainer.gradient_clip_val:
                raise ValueError(
                    f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) does not apply to EPLightningModule "
                    f"(manual optimization): pass EPLightningModule(gradient_clip_val={trainer.gradient_clip_val}) "
                    "instead (--model.gradient_clip_val in the recipes) and leave the Trainer's unset")
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) does not apply to "
                    "EPLightningModule (manual optimization): pass EPLightningModule(accumulate_grad_batches="
                    f"{trainer.accumulate_grad_batches}) instead (--model.accumulate_grad_batches in the recipes)")
        return [MidEpochResume(), DestroyProcessGroupAtExit()]

    def run_ep(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        dither_generator: torch.Generator | None = None,
    ) -> EPResult:
        """The EP phases on a batch with this module's settings (``generator``: for the random-sign estimator;
        ``dither_generator``: for dithered Sigma-Delta, used only with ``dither=True``; by default the module's
        own, so a caller that must not move the training streams, like a callback, passes its own)."""
        hp = self.hparams
        dither = (dither_generator or self.dither_generator) if hp.get("dither", False) else None
        return equilibrium_propagation(
            self.net, x, y, hp.beta, hp.t1, hp.t2, hp.estimator, hp["update"], hp.dynamics, hp.tol,
            generator or self.generator, hp.start, hp.omega, dither, hp.get("average_last", 0),
        )

    def run_bptt(self, x: Tensor, y: Tensor) -> BPTTResult:
        """BPTT's loss on a batch with this module's settings (``bptt_objective``); the nudge strengths come from
        the module's generator."""
        hp = self.hparams
        if hp.bptt_objective == "free":
            return bptt_loss(self.net, x, y, hp.t1, hp["update"], hp.start, hp.omega, hp.get("bptt_truncate"))
        nudge = draw_nudges(hp.beta, len(y), self.generator)
        return nudged_bptt_loss(self.net, x, y, nudge, hp.t1, hp.t2, hp["update"], hp.start, hp.omega)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hp = self.hparams
        if hp.method == "ep":
            res = self.run_ep(x, y)
            self.last_result = res
            objective, logits, loss, phases = res.surrogate, res.logits, res.loss, res.phases
        else:
            out = self.run_bptt(x, y)
            objective, logits, phases = out.loss, out.logits.detach(), {"free": out.free}
            if out.nudged is None:
                loss = out.loss.detach()
            else:  # the free state's loss, as EP logs
                loss = self.net.loss(out.free.state.s, y).mean().detach()
                phases["nudged"] = out.nudged
        if hp.get("curvature_bound") is not None:
            objective = objective + hp.curvature_weight * self._curvature_penalty(phases["free"], len(y))
        self._optimize(objective, batch_idx)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self._log_phases("train", phases, len(y))
        return loss

    def _curvature_penalty(self, free: Relaxation, batch: int) -> Tensor:
        """The curvature penalty on the first ``CURVATURE_SAMPLES`` free states of the batch; logs the mean largest
        eigenvalue and the fraction above the bound."""
        k = min(CURVATURE_SAMPLES, batch)
        bound = self.hparams.curvature_bound
        states = [s[:k] for s in free.state.s]
        # (checkpoints from before curvature_iters was an argument ran 10 rounds)
        penalty, values = curvature_penalty(self.net, states, bound, self.hparams.get("curvature_iters", 10))
        self.log("train/curvature", values.mean(), on_step=True, on_epoch=True, sync_dist=True, batch_size=k)
        self.log("train/curvature_above", (values > bound).to(values.dtype).mean(), on_step=True, on_epoch=True,
                 sync_dist=True, batch_size=k)
        return penalty

    def _optimize(self, objective: Tensor, batch_idx: int) -> None:
        """Backward (the EP surrogate or the BPTT loss), then every ``accumulate_grad_batches`` batches (and at the
        end of the epoch): clip, step the optimizer and the scheduler (per step or at the epoch's last batch)."""
        hp = self.hparams
        k = hp.accumulate_grad_batches
        opt = self.optimizers()
        last_batch = batch_idx + 1 == self.trainer.num_training_batches
        boundary = (batch_idx + 1) % k == 0 or last_batch
        if batch_idx % k == 0:
            opt.zero_grad()  # a window starts (the gradient stays in p.grad after the step, for callbacks)
        self.manual_backward(objective / k if k > 1 else objective)
        if not boundary:
            return
        if hp.gradient_clip_val is not None:
            self.clip_gradients(opt, gradient_clip_val=hp.gradient_clip_val, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None and (hp.scheduler_interval == "step" or last_batch):
            sched.step()

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
        self.last_free = free
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
        if self.hparams.get("dither", False):
            # the generator last used (after a GPU fit the module is back on the CPU, its generator still CUDA's)
            generator = self._dither or self.dither_generator
            checkpoint["dither_generator_state"] = generator.get_state()
            checkpoint["dither_generator_device"] = generator.device.type

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # generator states are CPU byte tensors, whatever load_from_checkpoint's map_location moved them to
        if "ep_generator_state" in checkpoint:
            self.generator.set_state(checkpoint["ep_generator_state"].cpu())
        if "dither_generator_state" in checkpoint:
            device = checkpoint.get("dither_generator_device", "cpu")
            self._dither, self._dither_states = None, {device: checkpoint["dither_generator_state"].cpu()}
