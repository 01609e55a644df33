"""Train with a recipe config and record the run in ``benchmarks/results/training.json``.

    python benchmarks/training.py fmnist --config recipes/configs/fmnist_paper.yaml [any recipe flags]
    python benchmarks/training.py mnist --config recipes/configs/mnist_paper.yaml --trainer.max_time 00:02:00:00

Each record: dataset, method ("ep"/"bptt"), spiking, pooling, epochs (trained, fractional), test_error (a fraction),
wall_s (fit + test), hardware, command, complete (all configured epochs ran, not cut by max_time/max_steps or
a train subset), plus the settings that matter (threshold, hidden, t1, t2, beta, batch_size, train_samples) and
``curve``: one point per validation (fractional epoch, val_acc, val_loss, free-phase state change), printed as it grows.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS_DIR, hardware  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

from lightning_ep.cli import build_cli, fit_and_test  # noqa: E402
from lightning_ep.data import FashionMNISTDataModule, MNISTDataModule  # noqa: E402

DATASETS = {"fmnist": (FashionMNISTDataModule, "fmnist_demo.yaml"), "mnist": (MNISTDataModule, "mnist_demo.yaml")}


def epochs_trained(trainer: Trainer) -> float:
    """Epochs trained so far, fractional within an epoch (and when a run is cut)."""
    return trainer.global_step / max(1, trainer.num_training_batches)


class CurveRecorder(Callback):
    """Keeps one point per validation run: the learning curve stored with the record."""

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        point = {"epoch": round(epochs_trained(trainer), 3),
                 "wall_s": round(time.perf_counter() - self.start, 1)}
        for key in ("val/acc", "val/loss", "val/change_free"):
            if key in metrics:
                point[key.replace("/", "_")] = round(float(metrics[key]), 6)
        self.points.append(point)
        print(f"curve: {json.dumps(point)}", flush=True)


def main(argv: list[str]) -> dict:
    if not argv or argv[0] not in DATASETS:
        raise SystemExit(f"usage: python benchmarks/training.py {{{'|'.join(DATASETS)}}} [recipe flags]")
    name, args = argv[0], argv[1:]
    datamodule_class, default_config = DATASETS[name]
    cli = build_cli(datamodule_class, ROOT / "recipes" / "configs" / default_config, f"lightning_ep-{name}", args)
    curve = CurveRecorder()
    cli.trainer.callbacks.append(curve)
    start = time.perf_counter()
    metrics = fit_and_test(cli)
    wall = time.perf_counter() - start
    hp, trainer, data = cli.model.hparams, cli.trainer, cli.datamodule
    epochs_done = round(epochs_trained(trainer), 2)
    complete = (trainer.max_epochs is not None and epochs_done >= trainer.max_epochs
                and data.hparams.train_subset is None and trainer.max_steps in (-1, None))
    record = {
        "dataset": "fashion_mnist" if name == "fmnist" else "mnist",
        "method": hp.method, "spiking": hp.threshold > 0, "pooling": hp.pooling, "epochs": epochs_done,
        "test_error": round(1.0 - float(metrics["test/acc"]), 6), "wall_s": round(wall, 1), "hardware": hardware(),
        "command": shlex.join(["python", "benchmarks/training.py", *argv]), "complete": bool(complete),
        "threshold": hp.threshold, "hidden": list(hp.hidden), "channels": list(hp.channels), "t1": hp.t1,
        "t2": hp.t2, "beta": hp.beta, "batch_size": data.hparams.batch_size,
        "train_samples": len(data.train_set) if data.train_set is not None else None,
        "max_epochs": trainer.max_epochs, "global_steps": trainer.global_step,
        "curve": curve.points,
    }
    if trainer.is_global_zero:
        path = RESULTS_DIR / "training.json"
        records = json.loads(path.read_text()) if path.exists() else []
        records.append(record)
        path.write_text(json.dumps(records, indent=2) + "\n")
        print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
