"""Test error of trained weights without and with test-time mirror averaging (``eval_hflip``), from the same weights.

    python benchmarks/eval_hflip.py fmnist runs/lightning_ep-fmnist/<run>/checkpoints/last.ckpt [more checkpoints]
    python benchmarks/eval_hflip.py fmnist CKPT --quick   # the first 1,000 test images, to benchmarks/results/quick/

Each checkpoint's module (``EPLightningModule`` or the snnTorch CSNN, as the dataset name says) is tested twice on
the official test split by ``Trainer.test``: as it was trained (each image alone) and with ``eval_hflip`` (each
image's outputs averaged with its left-right mirror's). Nothing is trained: the two test errors come from the same
weights, so their difference is the lever's alone. Each record is matched to the ``benchmarks/training.py`` record
that wrote the checkpoint (same dataset, same optimizer steps, and a test error without mirrors equal to the
recomputed one): ``trained_by`` is that record's command (None when no record matches: then the checkpoint is not
a recorded run's last state).
Keys: dataset, checkpoint, global_step (the optimizer steps that trained it), test_images, test_error (each image
alone), test_error_eval_hflip, difference (with minus without, a fraction), test_s and test_s_eval_hflip (wall
seconds of each test), trained_by, threads, hardware, command, load_avg_start, load_avg_end. Writes
``benchmarks/results/eval_hflip.json`` (``--out`` elsewhere): one record per checkpoint given, replacing the file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, Record, add_common_args, load_average, print_table, setup_threads, stamp, write_json
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Subset
from training import DATASETS

QUICK_TEST_IMAGES = 1000  # --quick: the first test images only


def test_error(model: LightningModule, loader: DataLoader) -> tuple[float, float]:
    """The model's test error on ``loader`` (a fraction) and the wall seconds the test took."""
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    start = time.perf_counter()
    metrics = trainer.test(model, loader, verbose=False)[0]
    return round(1.0 - float(metrics["test/acc"]), 6), round(time.perf_counter() - start, 2)


def training_record(dataset: str, global_step: int, error: float) -> str | None:
    """The command of the ``training.json`` record this checkpoint ends (see the module docstring), or None."""
    path = RESULTS_DIR / "training.json"
    records = json.loads(path.read_text()) if path.exists() else []
    for record in records:
        if (record["dataset"] == dataset and record.get("global_steps") == global_step
                and abs(record["test_error"] - error) < 5e-5):
            return record["command"]
    return None


def evaluate(name: str, checkpoint: Path, quick: bool, data_dir: Path | None) -> Record:
    datamodule_class, _, model_class = DATASETS[name]
    model = model_class.load_from_checkpoint(checkpoint, map_location="cpu")
    data = datamodule_class(**({"data_dir": str(data_dir)} if data_dir else {}))
    data.setup("test")
    loader = data.test_dataloader()
    if quick:
        loader = DataLoader(Subset(loader.dataset, range(QUICK_TEST_IMAGES)), batch_size=loader.batch_size)
    state: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.eval_hflip = False
    plain, plain_s = test_error(model, loader)
    model.eval_hflip = True
    mirrored, mirrored_s = test_error(model, loader)
    dataset = "fashion_mnist" if name.startswith("fmnist") else "mnist"
    return {
        "dataset": dataset, "checkpoint": str(checkpoint), "global_step": state["global_step"],
        "test_images": len(loader.dataset), "test_error": plain,
        "test_error_eval_hflip": mirrored, "difference": round(mirrored - plain, 6), "test_s": plain_s,
        "test_s_eval_hflip": mirrored_s,
        "trained_by": None if quick else training_record(dataset, state["global_step"], plain),
    }


def main(argv: list[str] | None = None) -> list[Record]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=sorted(DATASETS), help="what trained the checkpoints (training.py's name)")
    p.add_argument("checkpoints", type=Path, nargs="+", help="Lightning checkpoints of that module")
    add_common_args(p)
    args = p.parse_args(argv)
    setup_threads(args.threads)
    missing = [str(c) for c in args.checkpoints if not c.is_file()]
    if missing:
        raise SystemExit(f"no such checkpoint: {', '.join(missing)} (train one with benchmarks/training.py first)")
    load_start = load_average()
    records = [evaluate(args.dataset, c, args.quick, args.data_dir) for c in args.checkpoints]
    records = stamp(records, threads=args.threads, load_avg_start=load_start, load_avg_end=load_average())
    print_table(records, ["checkpoint", "global_step", "test_error", "test_error_eval_hflip", "difference", "test_s",
                          "test_s_eval_hflip"])
    write_json("eval_hflip", records, args.out, args.quick)
    return records


if __name__ == "__main__":
    main()
