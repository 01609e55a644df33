"""Optimizer and learning-rate schedule settings (``OptimConfig``) and what they build for Lightning.

Optimizers and schedulers are named by strings ('adam', or an import path such as ``torch.optim.RAdam``) with
their keyword arguments in dicts, so a checkpoint holds plain values only and always loads with Lightning's
defaults. In Python a class or a ``functools.partial`` of one is accepted and stored the same way.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_ep.config import as_plain

SHORT_NAMES = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}
DEFAULT_LR = 1e-3
DEFAULT_MOMENTUM = 0.9


def import_path(obj: object) -> str:
    """``module.Name`` of a class (how a config names it)."""
    return f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]


def resolve(path: str, base: type, what: str) -> type:
    """The class a config names by its import path, checked to be a ``base``."""
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        example = "torch.optim.RAdam" if base is torch.optim.Optimizer else "torch.optim.lr_scheduler.StepLR"
        raise ValueError(f"{what} {path!r} is not the import path of a {base.__module__}.{base.__qualname__} class "
                         f"(e.g. {example})")
    return cls


def _split_factory(value: object, args: dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    """A class or ``functools.partial`` of one as (import path, keyword arguments merged into ``args``)."""
    if isinstance(value, str):
        return value, dict(args)
    if isinstance(value, functools.partial) and isinstance(value.func, type) and not value.args:
        twice = sorted(set(value.keywords) & set(args))
        if twice:
            raise ValueError(f"{what}: {twice} given both in the partial and in {what}_args: give each once")
        return import_path(value.func), {**value.keywords, **args}
    if isinstance(value, type):
        return import_path(value), dict(args)
    raise ValueError(f"{what} must be a name, an import path, a class or a functools.partial of a class with keyword "
                     f"arguments only, got {value!r}: a checkpoint could not record it")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer, its learning rate schedule and gradient handling.

    Args:
        optimizer: 'adam', 'adamw', 'sgd', or the import path of a ``torch.optim.Optimizer`` class (e.g.
            'torch.optim.RAdam'); in Python also the class itself or a ``functools.partial`` of it, whose
            keyword arguments join ``optimizer_args``.
        lr: learning rate of every block (None: ``optimizer_args``' lr, else 1e-3).
        layer_lrs: one learning rate per block instead of ``lr``, input side first (the read-out last with
            ``loss='ce'``).
        weight_decay: weight decay (None: the optimizer's default; decoupled with 'adamw').
        momentum: SGD's momentum (optimizer 'sgd' only; None: 0.9).
        optimizer_args: further keyword arguments of the optimizer (e.g. ``{"betas": [0.9, 0.99]}``).
        scheduler: 'cosine' (learning rate annealed to 0 over the run), 'none', or the import path of a
            ``torch.optim.lr_scheduler`` class (with ``scheduler_args``); in Python also the class or a
            ``functools.partial`` of it.
        scheduler_args: keyword arguments of the scheduler (e.g. ``{"step_size": 10}``).
        scheduler_interval: step the scheduler every optimizer 'step' or every 'epoch'.
        gradient_clip_val: clip the norm of each update's gradient to this (None: no clipping). EP trains under
            manual optimization, where ``Trainer(gradient_clip_val=...)`` does not apply.
        accumulate_grad_batches: add up the gradients of this many batches before each optimizer step (in place
            of ``Trainer(accumulate_grad_batches=...)``, which manual optimization ignores).
    """

    optimizer: str | type[torch.optim.Optimizer] | functools.partial = "adam"
    lr: float | None = None
    layer_lrs: Sequence[float] | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    scheduler: str | type[torch.optim.lr_scheduler.LRScheduler] | functools.partial = "cosine"
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    scheduler_interval: Literal["step", "epoch"] = "step"
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        optimizer, optimizer_args = _split_factory(self.optimizer, self.optimizer_args, "optimizer")
        set_(self, "optimizer", optimizer)
        set_(self, "optimizer_args", as_plain(optimizer_args))  # tuples as lists: equal after a checkpoint
        if self.scheduler not in ("cosine", "none"):
            scheduler, scheduler_args = _split_factory(self.scheduler, self.scheduler_args, "scheduler")
            resolve(scheduler, torch.optim.lr_scheduler.LRScheduler, "scheduler")
            set_(self, "scheduler", scheduler)
            set_(self, "scheduler_args", as_plain(scheduler_args))
        elif self.scheduler_args:
            raise ValueError(f"scheduler_args apply to a scheduler class, not to scheduler={self.scheduler!r}")
        if self.layer_lrs is not None:
            set_(self, "layer_lrs", tuple(float(v) for v in self.layer_lrs))
        resolve(SHORT_NAMES.get(optimizer, optimizer), torch.optim.Optimizer, "optimizer")
        for name in ("lr", "weight_decay", "momentum"):
            if getattr(self, name) is not None and name in optimizer_args:
                raise ValueError(f"{name} is given twice: as OptimConfig.{name}={getattr(self, name)} and in the "
                                 f"optimizer's arguments ({name}={optimizer_args[name]}): give it once")
        if self.momentum is not None and SHORT_NAMES.get(optimizer) != "torch.optim.SGD":
            raise ValueError(f"momentum applies to optimizer='sgd' only, got optimizer={optimizer!r}: give other "
                             "optimizers' settings in optimizer_args (e.g. betas for Adam)")
        rates = [*(self.layer_lrs or ()), *([self.lr] if self.lr is not None else [])]
        if any(not (math.isfinite(r) and r > 0) for r in rates):
            raise ValueError(f"learning rates must be finite and > 0, got lr={self.lr}, layer_lrs={self.layer_lrs}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {self.gradient_clip_val}")
        if not isinstance(self.accumulate_grad_batches, int) or self.accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an integer >= 1, got {self.accumulate_grad_batches}")

    def build_optimizer(self, param_groups: Sequence[Sequence[nn.Parameter]]) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups`` (one per block), with ``layer_lrs`` when given.

        Args:
            param_groups: the parameters by block, input side first: one sequence of ``nn.Parameter`` per block (as
                many as ``layer_lrs`` when given).
        """
        if self.layer_lrs is not None and len(self.layer_lrs) != len(param_groups):
            raise ValueError(f"layer_lrs needs one learning rate per block ({len(param_groups)}), got "
                             f"{len(self.layer_lrs)}")
        cls = resolve(SHORT_NAMES.get(self.optimizer, self.optimizer), torch.optim.Optimizer, "optimizer")
        kwargs = dict(self.optimizer_args)
        kwargs["lr"] = self.lr if self.lr is not None else kwargs.get("lr", DEFAULT_LR)
        if self.weight_decay is not None:
            kwargs["weight_decay"] = self.weight_decay
        if cls is torch.optim.SGD:
            kwargs["momentum"] = self.momentum if self.momentum is not None else kwargs.get("momentum",
                                                                                          DEFAULT_MOMENTUM)
        lrs = self.layer_lrs or [kwargs["lr"]] * len(param_groups)
        groups = [{"params": list(p), "lr": lr} for p, lr in zip(param_groups, lrs, strict=True)]
        return cls(groups, **kwargs)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int, epochs: int) -> Any | None:
        """The scheduler (None for 'none'): 'cosine' anneals to 0 over ``total_steps`` optimizer steps (or
        ``epochs`` with ``scheduler_interval='epoch'``).

        Args:
            optimizer: the optimizer whose learning rates it schedules (from ``build_optimizer``).
            total_steps: the run's optimizer steps (integer; 'cosine' with ``scheduler_interval='step'`` only: >= 1,
                else a ValueError).
            epochs: the run's epochs (integer; 'cosine' with ``scheduler_interval='epoch'`` only: >= 1, else a
                ValueError).
        """
        if self.scheduler == "none":
            return None
        if self.scheduler == "cosine":
            unit = self.scheduler_interval
            total = epochs if unit == "epoch" else total_steps
            if total < 1:
                raise ValueError(f"the 'cosine' scheduler anneals over the run's {unit}s, but this run has no "
                                 f"positive, bounded number of them (got {total}; -1: unbounded); set "
                                 "--trainer.max_epochs (or max_steps) to a positive number, or choose "
                                 "--model.optim.scheduler none")
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
        cls = resolve(self.scheduler, torch.optim.lr_scheduler.LRScheduler, "scheduler")
        return cls(optimizer, **self.scheduler_args)

    def lightning_config(self, param_groups: Sequence[Sequence[nn.Parameter]], trainer: Any,
                         monitor: str | None = None) -> Any:
        """What ``configure_optimizers`` returns for ``trainer``'s run (``monitor``: the metric a
        ReduceLROnPlateau watches, under automatic optimization).

        Args:
            param_groups: the parameters by block, input side first (as for ``build_optimizer``).
            trainer: the run's Lightning ``Trainer``: its ``estimated_stepping_batches`` and ``max_epochs`` set the
                schedule's length (None: 1 step, 1 epoch).
            monitor: the logged metric the scheduler watches (e.g. ``'val/loss'``; default None: none).
        """
        opt = self.build_optimizer(param_groups)
        if self.scheduler == "none":
            return opt
        total, epochs = run_length(trainer)
        sched = self.build_scheduler(opt, total, epochs)
        scheduler = {"scheduler": sched, "interval": self.scheduler_interval}
        return {"optimizer": opt, "lr_scheduler": scheduler if monitor is None else {**scheduler, "monitor": monitor}}


def run_length(trainer: Any) -> tuple[int, int]:
    """A run's optimizer steps and epochs as a schedule needs them (-1 where the run is unbounded; 1 and 1 without a
    trainer).

    Args:
        trainer: the run's Lightning ``Trainer`` (its ``estimated_stepping_batches`` and ``max_epochs``), or None.
    """
    if trainer is None:
        return 1, 1
    steps = trainer.estimated_stepping_batches
    epochs = trainer.max_epochs
    return (int(steps) if math.isfinite(steps) else -1), (int(epochs) if epochs is not None else -1)
