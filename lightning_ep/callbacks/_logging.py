"""Send scalars, figures and tables to whatever loggers a Trainer has: W&B and TensorBoard natively, any other
logger (CSV, ...) or none as files under ``<log dir>/plots/`` (the latest figure and table of each key). Where
Lightning suppresses logging (``fast_dev_run``, which swaps the loggers for a ``DummyLogger``; the tuner's trial
runs, which do the same) nothing is written, as Lightning writes no logs or checkpoints then.

Everything here runs on global rank zero only and uses no collective, so callers may call it from rank zero alone.
Figures are drawn by matplotlib's Agg canvas without pyplot (no global figure registry, no GUI backend).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOTS_DIR = "plots"


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on its own Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an (H, W, 3) uint8 RGB array."""
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """``log_metrics`` on every attached logger at ``step`` (independent of ``log_every_n_steps``)."""
    if not trainer.is_global_zero or not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def log_figure(trainer: pl.Trainer, key: str, fig: Figure, step: int) -> list[Path]:
    """W&B: an image; TensorBoard: an image; other loggers or none: ``plots/<key>.png``. Returns the files written."""
    if not trainer.is_global_zero:
        return []
    image: np.ndarray | None = None
    written = []
    for target in _targets(trainer):
        if isinstance(target, Path):
            path = target / f"{_file_name(key)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
            written.append(path)
            continue
        image = figure_to_array(fig) if image is None else image
        if isinstance(target, WandbLogger):
            target.log_image(key, [image], step=step)
        else:
            target.experiment.add_image(key, image, step, dataformats="HWC")
    return written


def log_table(trainer: pl.Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
    """W&B: a ``wandb.Table``; TensorBoard: a markdown table as text; other loggers or none: ``plots/<key>.csv``."""
    if not trainer.is_global_zero:
        return
    for target in _targets(trainer):
        if isinstance(target, Path):
            path = target / f"{_file_name(key)}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", *columns])
                writer.writerows([step, *row] for row in rows)
        elif isinstance(target, WandbLogger):
            target.log_table(key, columns=list(columns), data=[list(r) for r in rows], step=step)
        else:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
            target.experiment.add_text(key, "\n".join(lines), step)


def logging_suppressed(trainer: pl.Trainer) -> bool:
    """Whether Lightning suppresses logging in this run: ``fast_dev_run``, or loggers swapped for a ``DummyLogger``."""
    return bool(trainer.fast_dev_run) or any(isinstance(lg, DummyLogger) for lg in trainer.loggers)


def _targets(trainer: pl.Trainer) -> list[Logger | Path]:
    """The loggers that take images natively, plus one directory for the rest (or for no logger at all); none
    where Lightning suppresses logging."""
    if logging_suppressed(trainer):
        return []
    native: list[Logger | Path] = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger | TensorBoardLogger)]
    others = [lg for lg in trainer.loggers if not isinstance(lg, WandbLogger | TensorBoardLogger)]
    if others or not trainer.loggers:
        native.append(_plot_dir(trainer, others[0] if others else None))
    return native


def _plot_dir(trainer: pl.Trainer, logger: Logger | None) -> Path:
    root = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir
    return Path(root) / PLOTS_DIR


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
