"""``EPLightningModule``: trains a convergent spiking network with Equilibrium Propagation (or BPTT) in Lightning.

Manual optimization: ``training_step`` runs the free, +beta and -beta phases, calls ``manual_backward`` on the EP
surrogate (so DDP all-reduces the EP gradient like any other), clips, steps the optimizer and the LR scheduler.
Validation and test run the free phase only, without autograd (they work under Lightning's inference mode).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ep.bptt import BPTTResult, bptt_loss, draw_nudges, nudged_bptt_loss
from lightning_ep.classifier import ImageClassifier, check_flag
from lightning_ep.config import (
    BPTTConfig,
    CurvatureConfig,
    EPConfig,
    Method,
    NetworkConfig,
    PhasesConfig,
    as_plain,
    coerce,
)
from lightning_ep.dynamics import Relaxation
from lightning_ep.ep import EPResult, check_ep_args, equilibrium_propagation, free_phase
from lightning_ep.network import ConvergentNetwork
from lightning_ep.optimization import OptimConfig
from lightning_ep.random_streams import TrainingStreams
from lightning_ep.stability import CURVATURE_SAMPLES, check_quadratic, curvature_penalty


class EPLightningModule(ImageClassifier):
    """A convergent network of spiking conv and dense layers, trained by Equilibrium Propagation (or BPTT).

    ``EPLightningModule()`` is the paper configuration: the spiking 2C2FC network (Sigma-Delta threshold 0.01,
    average pooling, hidden 256), T1 30 / T2 10, beta 0.3, the curvature penalty, Adam at 1e-3 with a cosine
    schedule. Change a group: ``EPLightningModule(phases=PhasesConfig(t1=12, t2=8))``, or ``--model.phases.t1 12``
    in the recipes. ``EPLightningModule.preset("demo")`` is a faster setting for CPU demos. A network built
    yourself: ``from_network``. ``predict_output`` ('class', 'logits' or 'probabilities') sets what
    ``Trainer.predict`` returns.

    Args:
        network: the network's architecture and neurons (a NetworkConfig).
        phases: the free and nudged phases and the state update (a PhasesConfig).
        ep: the EP estimate: beta, estimator, dithering (an EPConfig).
        method: 'ep' (Equilibrium Propagation) or 'bptt' (backpropagation through the same dynamics, a baseline).
        bptt: what 'bptt' backpropagates (a BPTTConfig; ignored by 'ep').
        curvature: the curvature penalty (a CurvatureConfig), or None for none.
        optim: optimizer, learning rates, schedule, clipping, accumulation (an OptimConfig).
        seed: seed of the module's own random streams (random-sign estimator, nudge strengths, dithering); any
            integer accepted by ``torch.Generator.manual_seed`` (default 0).
        eval_hflip: validation, test and prediction average each image's logits with its left-right mirror's
            (test-time augmentation, for classes that look alike mirrored, as FashionMNIST's; twice the cost).

    Raises:
        ValueError: a bad setting, or settings of different groups that do not go together (each message names
            the setting to change).
        TypeError: a built ``ConvergentNetwork`` passed as ``network`` (use ``from_network``).
    """

    def __init__(
        self,
        network: NetworkConfig = NetworkConfig(),
        phases: PhasesConfig = PhasesConfig(),
        ep: EPConfig = EPConfig(),
        method: Method = "ep",
        bptt: BPTTConfig = BPTTConfig(),
        curvature: CurvatureConfig | None = CurvatureConfig(),
        optim: OptimConfig = OptimConfig(),
        seed: int = 0,
        eval_hflip: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(network, ConvergentNetwork):
            raise TypeError("network takes a NetworkConfig: for a network you built, use "
                            "EPLightningModule.from_network(net, ...)")
        self.network_config = coerce(NetworkConfig, network, "network")
        self.phases = coerce(PhasesConfig, phases, "phases")
        self.ep = coerce(EPConfig, ep, "ep")
        self.bptt = coerce(BPTTConfig, bptt, "bptt")
        self.curvature = None if curvature is None else coerce(CurvatureConfig, curvature, "curvature")
        self.optim = coerce(OptimConfig, optim, "optim")
        if method not in ("ep", "bptt"):
            raise ValueError(f"unknown method {method!r}: use 'ep' or 'bptt'")
        self.method = method
        self.seed = seed
        self.eval_hflip = check_flag("eval_hflip", eval_hflip)
        self.net = self.network_config.build()
        self._check_combination()
        # Plain values only, so that every checkpoint loads with Lightning's defaults (weights_only).
        self.save_hyperparameters({
            "network": as_plain(self.network_config), "phases": as_plain(self.phases), "ep": as_plain(self.ep),
            "method": method, "bptt": as_plain(self.bptt), "curvature": as_plain(self.curvature),
            "optim": as_plain(self.optim), "seed": seed, "eval_hflip": eval_hflip,
        })
        self.automatic_optimization = False
        self.streams = TrainingStreams(seed, self.ep.dither)
        self._init_metrics(self.net.num_classes)
        self.last_result: EPResult | None = None  # the last training batch's EP phases (for callbacks)
        self.last_free: Relaxation | None = None  # the last validation/test batch's free phase (for callbacks)

    @classmethod
    def from_network(cls, net: ConvergentNetwork, **settings: Any) -> EPLightningModule:
        """A module that trains ``net`` itself (its weights and neurons); ``settings`` are the other arguments.
        The hyperparameters record ``net``'s architecture, so checkpoints load without passing it again.

        Args:
            net: the network to train (a ``ConvergentNetwork``; its weights are used as they are, not copied).
            **settings: any other ``EPLightningModule`` argument (``phases``, ``ep``, ``method``, ``bptt``,
                ``curvature``, ``optim``, ``seed``, ``eval_hflip``), not ``network``.

        Raises:
            TypeError: ``network`` among ``settings``.
        """
        if "network" in settings:
            raise TypeError("from_network takes the network as net: drop network=")
        if any(b.neuron.spike_grad is not None for b in net.blocks):
            warnings.warn("the network's spike_grad is not part of its recorded configuration: a checkpoint of this "
                          "module reloads with snnTorch's default atan surrogate", stacklevel=2)
        model = cls(network=NetworkConfig.of(net), **settings)
        model.net = net
        return model

    @classmethod
    def preset(cls, name: str, **settings: Any) -> EPLightningModule:
        """A named configuration: 'paper' (the defaults) or 'demo' (a warm-started, over-relaxed setting that trains
        in a few minutes on a CPU: T1 12 / T2 8, beta 0.2, no curvature penalty); ``settings`` override groups.

        Args:
            name: a key of ``lightning_ep.presets.PRESETS``: ``'paper'`` or ``'demo'``.
            **settings: ``EPLightningModule`` arguments that replace the preset's whole group (e.g.
                ``phases=PhasesConfig(t1=20)``).

        Raises:
            ValueError: an unknown ``name``.
        """
        from lightning_ep.presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **settings})

    def _check_combination(self) -> None:
        """Raise a ValueError for settings of different groups that do not go together."""
        net, phases, ep = self.net, self.phases, self.ep
        check_ep_args(net, ep.beta, phases.t1, phases.t2, ep.estimator, ep.average_last, phases.tol)
        if phases.dynamics == "autograd" and ep.average_last:
            raise ValueError("average_last needs the explicit dynamics (phases.dynamics='explicit')")
        if ep.dither and (self.method != "ep" or not net.spiking or not net.blocks[0].neuron.graded):
            raise ValueError("dither (stochastic rounding of the graded Sigma-Delta spike counts) needs method='ep', "
                             "network.threshold > 0 and network.graded=True")
        if self.bptt.truncate is not None and not self.bptt.truncate <= phases.t1:
            raise ValueError(f"bptt.truncate ({self.bptt.truncate}) must be <= phases.t1 ({phases.t1})")
        if self.curvature is not None:
            try:
                check_quadratic(net)
            except ValueError as err:
                raise ValueError(f"the curvature penalty: {err}. Use pooling='avg', or curvature=None "
                                 "(--model.curvature null)") from err
        if self.optim.scheduler.endswith("ReduceLROnPlateau"):
            raise ValueError("ReduceLROnPlateau needs a monitored metric, which manual optimization does not pass: "
                             "use a step/epoch scheduler (e.g. cosine, torch.optim.lr_scheduler.StepLR)")

    # -- random streams and checkpoints -----------------------------------------------------------------------
    @property
    def generator(self) -> torch.Generator:
        """The generator of the random-sign estimator (EP) and of the nudge strengths (nudged BPTT)."""
        return self.streams.main

    @property
    def dither_generator(self) -> torch.Generator | None:
        """The generator of dithered Sigma-Delta on this module's device (``None`` unless ``ep.dither``)."""
        return self.streams.dither(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.streams.state_dict(self.device))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.streams.load_state_dict(checkpoint)

    # -- training -------------------------------------------------------------------------------------------
    def param_groups(self) -> list[list[nn.Parameter]]:
        groups = [list(b.parameters()) for b in self.net.blocks]
        if self.net.readout is not None:
            groups.append(list(self.net.readout.parameters()))
        return groups

    def configure_callbacks(self) -> list[Any]:
        """The shared callbacks; refuses the Trainer's clipping / accumulation (manual optimization) with the
        setting to use instead (this hook runs before Lightning's own, less specific, refusal)."""
        trainer = self.trainer
        if trainer.state.fn == "fit":
            for name, value, unset in (("gradient_clip_val", trainer.gradient_clip_val, None),
                                       ("accumulate_grad_batches", trainer.accumulate_grad_batches, 1)):
                if value not in (unset, 0):
                    raise ValueError(
                        f"Trainer({name}={value}) does not apply to EPLightningModule (manual optimization): pass "
                        f"EPLightningModule(optim=OptimConfig({name}={value})) instead (--model.optim.{name} "
                        "in the recipes) and leave the Trainer's unset")
        return super().configure_callbacks()

    def run_ep(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        dither_generator: torch.Generator | None = None,
    ) -> EPResult:
        """The EP phases on a batch with this module's settings (``generator``: for the random-sign estimator;
        ``dither_generator``: for dithered Sigma-Delta, used only with ``ep.dither``; by default the module's
        own, so a caller that must not move the training streams, like a callback, passes its own).

        Args:
            x: the input batch, ``(B, *input_shape)``, on the module's device and dtype.
            y: the labels, class indices in ``[0, num_classes)``.
            generator: a CPU generator for the random-sign estimator's sign (None: the module's own).
            dither_generator: a generator on the module's device for dithered Sigma-Delta (None: the module's own;
                unused unless ``ep.dither``).
        """
        phases, ep = self.phases, self.ep
        dither = (dither_generator or self.dither_generator) if ep.dither else None
        return equilibrium_propagation(
            self.net, x, y, ep.beta, phases.t1, phases.t2, ep.estimator, phases.update, phases.dynamics,
            phases.tol, generator or self.generator, phases.start, phases.omega, dither, ep.average_last,
        )

    def run_bptt(self, x: Tensor, y: Tensor) -> BPTTResult:
        """BPTT's loss on a batch with this module's settings (``bptt.objective``); the nudge strengths come from
        the module's generator.

        Args:
            x: the input batch, ``(B, *input_shape)``, float images scaled to [0, 1].
            y: the labels, ``(B,)`` class indices in ``[0, num_classes)``.
        """
        phases = self.phases
        if self.bptt.objective == "free":
            return bptt_loss(self.net, x, y, phases.t1, phases.update, phases.start, phases.omega, self.bptt.truncate)
        nudge = draw_nudges(self.ep.beta, len(y), self.generator)
        return nudged_bptt_loss(self.net, x, y, nudge, phases.t1, phases.t2, phases.update, phases.start,
                                phases.omega)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.unpack(batch)
        if self.method == "ep":
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
        curvature = self.curvature
        if curvature is not None and batch_idx % curvature.every_n_batches == 0:  # lazily: at n times the weight
            weight = curvature.every_n_batches * curvature.weight
            objective = objective + weight * self._curvature_penalty(phases["free"], len(y))
        self._optimize(objective, batch_idx)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self._log_phases("train", phases, len(y))
        return loss

    def _curvature_penalty(self, free: Relaxation, batch: int) -> Tensor:
        """The curvature penalty on the first ``CURVATURE_SAMPLES`` free states of the batch; logs the mean largest
        eigenvalue and the fraction above the bound."""
        assert self.curvature is not None
        k = min(CURVATURE_SAMPLES, batch)
        bound = self.curvature.bound
        penalty, values = curvature_penalty(self.net, [s[:k] for s in free.state.s], bound, self.curvature.iters)
        self.log("train/curvature", values.mean(), on_step=True, on_epoch=True, sync_dist=True, batch_size=k)
        self.log("train/curvature_above", (values > bound).to(values.dtype).mean(), on_step=True, on_epoch=True,
                 sync_dist=True, batch_size=k)
        return penalty

    def _optimize(self, objective: Tensor, batch_idx: int) -> None:
        """Backward (the EP surrogate or the BPTT loss), then every ``accumulate_grad_batches`` batches (and at the
        end of the epoch): clip, step the optimizer and the scheduler (per step or at the epoch's last batch)."""
        k = self.optim.accumulate_grad_batches
        opt = self.optimizers()
        last_batch = batch_idx + 1 == self.trainer.num_training_batches
        if batch_idx % k == 0:
            opt.zero_grad()  # a window starts (the gradient stays in p.grad after the step, for callbacks)
        self.manual_backward(objective / k if k > 1 else objective)
        if not ((batch_idx + 1) % k == 0 or last_batch):
            return
        if self.optim.gradient_clip_val is not None:
            self.clip_gradients(opt, gradient_clip_val=self.optim.gradient_clip_val, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None and (self.optim.scheduler_interval == "step" or last_batch):
            sched.step()

    # -- evaluation -----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits after the free phase (``phases.evaluation_steps`` steps, no autograd); uint8 or [0, 1] images."""
        x = self.images(x)
        self.net.check_input(x)
        return self.net.logits(self._free(x).state.s)

    def _free(self, x: Tensor) -> Relaxation:
        phases = self.phases
        return free_phase(self.net, x, phases.evaluation_steps, phases.update, "explicit", phases.tol, phases.start,
                          phases.omega)

    def evaluate(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        self.net.check_input(x, y)
        free = self._free(x)
        self.last_free = free
        self._log_phases(stage, {"free": free}, len(y))
        return self.net.logits(free.state.s), self.net.loss(free.state.s, y).mean()

    def _log_phases(self, stage: str, phases: dict[str, Relaxation], batch: int) -> None:
        """How far each phase converged (its last step's largest and mean state change), its steps, and the spike
        rate per layer (spikes per neuron per step, in the free phase)."""
        on_step = stage == "train"
        for name, phase in phases.items():
            self.log(f"{stage}/change_{name}", phase.last_change, on_step=on_step, on_epoch=True, sync_dist=True,
                     batch_size=batch)
            self.log(f"{stage}/mean_change_{name}", phase.mean_change, on_step=on_step, on_epoch=True,
                     sync_dist=True, batch_size=batch)
            if self.phases.tol is not None:
                self.log(f"{stage}/steps_{name}", float(phase.steps), on_step=on_step, on_epoch=True, sync_dist=True,
                         batch_size=batch)
        if self.net.spiking:
            free = phases["free"]
            for i, (count, shape) in enumerate(zip(free.spikes, self.net.state_shapes, strict=True)):
                rate = count / (batch * free.steps * torch.Size(shape).numel())
                self.log(f"{stage}/spike_rate_layer{i + 1}", rate, on_step=on_step, on_epoch=True, sync_dist=True,
                         batch_size=batch)

