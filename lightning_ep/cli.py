"""The recipes' command line: LightningCLI over ``EPLightningModule`` and a data module, then fit and test.

``python recipes/fmnist.py --trainer.devices 2 --model.beta=0.2 --config my.yaml`` and every ``--model.*``,
``--data.*``, ``--trainer.*`` flag work; ``--print_config`` prints the merged config. The default logger is W&B
(offline, with the command to sync, when there is no login), or a CSV logger when wandb is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_ep.module import EPLightningModule

RUNS_DIR = "runs"


def wandb_logged_in() -> bool:
    """Whether W&B has credentials (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def default_logger(project: str) -> dict[str, Any]:
    """W&B when installed (offline without a login or with WANDB_MODE=offline), else CSV."""
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


class EPLightningCLI(LightningCLI):
    """Links the data's input shape and class count into the model; ``--ckpt_path`` resumes a run."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def build_cli(
    datamodule_class: type[LightningDataModule],
    default_config: str | Path,
    project: str,
    args: Sequence[str] | None = None,
    model_class: type[LightningModule] = EPLightningModule,
) -> EPLightningCLI:
    """Parse ``args`` (default: ``sys.argv``) over ``default_config`` and instantiate trainer, model and data.
    ``model_class``: the LightningModule the ``--model.*`` flags build (any with ``input_shape`` and
    ``num_classes`` arguments, e.g. ``lightning_ep.baselines.SnnTorchCSNN``)."""
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
    """Fit (resuming from ``--ckpt_path`` when given), test, print the test accuracy, close the W&B run."""
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
    """Fit then test; prints and returns the test metrics. ``default_config`` is read first, flags override it."""
    return fit_and_test(build_cli(datamodule_class, default_config, project, args, model_class))
