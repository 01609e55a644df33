"""The recipes' command line: LightningCLI over ``EPLightningModule`` and a data module, then fit and test.

``python recipes/fmnist.py --trainer.devices 2 --model.ep.beta=0.2 --config my.yaml`` and every ``--model.*``,
``--data.*``, ``--trainer.*`` flag work; ``--print_config`` prints the merged config. The default logger is W&B
(offline, with the command to sync, when there is no login), or a CSV logger when wandb is not installed.
``--checkpoint_every_n_steps N`` also writes ``last.ckpt`` every N training steps (resume a killed run from it
with ``--ckpt_path``). LightningCLI's top-level ``--optimizer`` / ``--lr_scheduler`` are refused: the modules set up
their own optimizer and schedule (manual optimization), from their ``--model.*`` optimizer flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_ep.module import EPLightningModule

RUNS_DIR = "runs"
"""The directory (relative to the working directory) where the recipes' logs and checkpoints go."""


def wandb_logged_in() -> bool:
    """Whether W&B has credentials (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def default_logger(project: str) -> dict[str, Any]:
    """W&B when installed (offline without a login or with WANDB_MODE=offline), else CSV.

    Args:
        project: the W&B project name (a string; unused by the CSV logger).
    """
    if importlib.util.find_spec("wandb") is None:
        rank_zero_info("wandb is not installed: logging to CSV under runs/ (pip install 'lightning_ep[wandb]').")
        return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": RUNS_DIR}}
    offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled") or not wandb_logged_in()
    if offline:
        rank_zero_info(
            f"W&B: no login, logging offline under {RUNS_DIR}/wandb/. Sync afterwards with "
            f"`wandb login && wandb sync {RUNS_DIR}/wandb/offline-run-*`."
        )
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": project, "save_dir": RUNS_DIR, "offline": offline, "log_model": False},
    }


class PeriodicLastCheckpoint(ModelCheckpoint):
    """Writes only ``last.ckpt`` (the full training state): every ``every_n_steps`` training steps and at the end of
    every training epoch, including one cut short (``max_time``, ``max_steps``, a stop).

    Args:
        every_n_steps: training steps (optimizer steps, ``trainer.global_step``) between two writes.
        dirpath: the directory of ``last.ckpt``; by default the logger's ``checkpoints`` folder (or
            ``<default_root_dir>/checkpoints`` without a logger), as for ``ModelCheckpoint``.
    """

    def __init__(self, every_n_steps: int, dirpath: str | Path | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps)
        self.every_n_steps = every_n_steps

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            last = Path(self.dirpath or ".", self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            rank_zero_info(f"Writing {last} every {self.every_n_steps} training steps and at the end of every epoch; "
                           f"resume a run cut short with --ckpt_path {last}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # the state after the optimizer step is the one to resume from
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RefusedArgument(argparse.ArgumentTypeError, ValueError):
    """A refused top-level argument (an ``ArgumentTypeError`` on the command line, a ``ValueError`` in a config)."""


def refuse(message: str) -> Callable[[Any], None]:
    """An argument type that accepts only null (configs saved by earlier runs hold ``optimizer: null``) and refuses
    any other value with ``message``."""

    def check(value: Any) -> None:
        if value is None or value in ("null", "None"):
            return None
        raise RefusedArgument(message)

    return check


class EPLightningCLI(LightningCLI):
    """Links the data's input shape and class count into the model; ``--ckpt_path`` resumes a run;
    ``--checkpoint_every_n_steps`` writes ``last.ckpt`` periodically; refuses ``--optimizer`` / ``--lr_scheduler``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_configure_optimizers"] = False  # the modules configure their own (manual optimization)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")
        parser.add_argument(
            "--checkpoint_every_n_steps", type=PositiveInt | None, default=None,
            help="also write last.ckpt (the full training state) every N training steps and at each epoch's end "
                 "(in the logger's checkpoints folder); a run killed mid-epoch resumes from it with --ckpt_path")
        use = ("use the model's own --model.optim.optimizer, --model.optim.lr, --model.optim.weight_decay and "
               "--model.optim.scheduler instead (see --help)")
        why = {"--optimizer": "would replace the model's optimizer (one parameter group, no learning-rate schedule) "
                              "while its hyperparameters still name its own",
               "--lr_scheduler": "would be ignored: the model steps its own schedule (manual optimization)"}
        for flag, effect in why.items():
            parser.add_argument(flag, type=refuse(f"LightningCLI's {flag} {effect}; {use}"), default=None,
                                help=f"not supported: {use}")
        # EPLightningModule keeps them in its network group; the baselines take them flat
        prefix = "model.network." if issubclass(self.model_class, EPLightningModule) else "model."
        for name in ("input_shape", "num_classes"):
            parser.link_arguments(f"data.{name}", prefix + name, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        every = self._get(self.config, "checkpoint_every_n_steps")
        if every is not None and self._get(self.config, "trainer.enable_checkpointing") is False:
            self.parser.error(f"--checkpoint_every_n_steps {every} writes checkpoints, but checkpointing is off: drop "
                              "--trainer.enable_checkpointing=false (or the flag)")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with a ``PeriodicLastCheckpoint`` added when ``--checkpoint_every_n_steps`` is set; it
        takes over ``last.ckpt`` from the configured ``ModelCheckpoint`` s that write one to the same folder (else
        they would write ``last-v1.ckpt`` beside it), which keep their other checkpoints."""
        every = self._get(self.config, "checkpoint_every_n_steps")
        if every is None:
            return super().instantiate_trainer(**kwargs)
        callbacks = kwargs.pop("callbacks", self._get(self.config_init, "trainer", default={}).get("callbacks")) or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        periodic = PeriodicLastCheckpoint(every)
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath == periodic.dirpath:
                callback.save_last = False
                rank_zero_info(f"--checkpoint_every_n_steps: last.ckpt is written by PeriodicLastCheckpoint, not by "
                               f"ModelCheckpoint(monitor={callback.monitor!r}), which keeps its other checkpoints.")
        return super().instantiate_trainer(callbacks=[*callbacks, periodic], **kwargs)


def build_cli(
    datamodule_class: type[LightningDataModule],
    default_config: str | Path,
    project: str,
    args: Sequence[str] | None = None,
    model_class: type[LightningModule] = EPLightningModule,
) -> EPLightningCLI:
    """Parse ``args`` (default: ``sys.argv``) over ``default_config`` and instantiate trainer, model and data.
    ``model_class``: the LightningModule the ``--model.*`` flags build (any with ``input_shape`` and
    ``num_classes`` arguments, e.g. ``lightning_ep.baselines.SnnTorchCSNN``).

    Args:
        datamodule_class: the LightningDataModule class the ``--data.*`` flags build.
        default_config: a YAML config file read first (a path); flags and ``--config`` files override it.
        project: the W&B project name of the default logger.
        args: the command-line arguments (None: ``sys.argv[1:]``).
        model_class: the LightningModule class (default ``EPLightningModule``).
    """
    return EPLightningCLI(
        model_class,
        datamodule_class,
        run=False,
        args=list(args) if args is not None else None,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_config_files": [str(default_config)]},
        trainer_defaults={"logger": default_logger(project), "default_root_dir": RUNS_DIR},
    )


def fit_and_test(cli: LightningCLI) -> dict[str, float]:
    """Fit (resuming from ``--ckpt_path`` when given), test, print the test accuracy, close the W&B run.

    Args:
        cli: a LightningCLI built with ``run=False`` (e.g. by ``build_cli``): its trainer, model and datamodule.
    """
    ckpt_path = cli.config.get("ckpt_path") if hasattr(cli.config, "get") else None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    metrics = results[0] if results else {}
    if cli.trainer.is_global_zero and "test/acc" in metrics:
        print(f"test accuracy: {metrics['test/acc']:.4f} (test error {100 * (1 - metrics['test/acc']):.2f} %)")
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()  # flush the run (offline: its file is complete and ready to sync)
    return metrics


def run_recipe(
    datamodule_class: type[LightningDataModule],
    default_config: str | Path,
    project: str,
    args: Sequence[str] | None = None,
    model_class: type[LightningModule] = EPLightningModule,
) -> dict[str, float]:
    """Fit then test; prints and returns the test metrics. ``default_config`` is read first, flags override it.

    Args:
        datamodule_class: the LightningDataModule class the ``--data.*`` flags build.
        default_config: a YAML config file read first (a path); flags and ``--config`` files override it.
        project: the W&B project name of the default logger.
        args: the command-line arguments (None: ``sys.argv[1:]``).
        model_class: the LightningModule class (default ``EPLightningModule``).

    Returns:
        The test metrics (e.g. ``'test/acc'``), empty when testing logged none.
    """
    return fit_and_test(build_cli(datamodule_class, default_config, project, args, model_class))
