"""What a training batch of a recipe configuration costs, with levers side by side: the epochs a time budget buys.

    python benchmarks/step_cost.py [--quick] [--dataset fmnist] [--config recipes/configs/fmnist_best.yaml]
        [--variant "--model.curvature null" --variant "" ...] [--batches 21] [--repeats 5] [--budget-min 120]

Each variant is the configuration's command (``benchmarks/training.py DATASET --config CONFIG``) with the variant's
flags added; ``""`` is the configuration itself (the default variants: the curvature penalty's levers, batch 128,
BPTT and the network without spikes). Each variant's module and DataModule are built as the recipe builds them
(``lightning_ep.cli.build_cli``, the configuration's seed: the same initial weights and batches) and trained through
Lightning's fit loop for ``--batches`` batches, without logger, checkpoints or validation.
Timing: each round trains every variant in turn (round-robin, so that load from other processes hits every
variant alike); a round's figure is the time from the end of a fit's first batch (warm-up, untimed) to the end of
its last, over the batches between: a batch as training runs it (loading and augmenting it, the phases, the
curvature penalty where it acts, backward, the optimizer step, logging), averaged over an even number of batches so
that a penalty every second batch counts at its share. From the configuration's initial weights: the phases' step
counts are fixed, so a batch costs about the same later in training.
Keys: dataset, config, variant (the flags added), batch_size, ms_per_batch (the median round), ms_min (the fastest
round), train_samples (the configuration's training split), batches_per_epoch (train_samples over the variant's
batch size),
train_s_per_epoch (ms_per_batch x batches_per_epoch: the training batches alone, no validation or checkpoints, so a
floor of an epoch's wall time), epochs_in_budget (``--budget-min`` over train_s_per_epoch: a ceiling),
relative_epoch_cost (train_s_per_epoch over the configuration's own), timed_batches (a round's), repeats, threads,
hardware, command, load_average. Time one thing at a time: a second job on the cores ruins the figures.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from common import add_common_args, load_average, print_table, setup_threads, stamp, write_json
from lightning.pytorch import Callback, LightningModule, Trainer
from training import DATASETS

from lightning_ep.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ("", "--model.curvature.every_n_batches 2", "--model.curvature.iters 10",
                    "--model.curvature null", "--data.batch_size 128", "--model.method bptt",
                    "--model.network.threshold 0")
QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
         "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]


class BatchClock(Callback):
    """The time of each training batch's end."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        self.ends.append(time.perf_counter())

    def seconds_per_batch(self) -> float:
        """The mean seconds a batch after the first."""
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def time_variant(dataset: str, config: Path, flags: str, batches: int) -> tuple[float, int, int]:
    """One fit of ``batches`` batches of a variant: its seconds a batch (the first untimed), its batch size and the
    images of the configuration's whole training split."""
    datamodule_class, default_config, model_class = DATASETS[dataset]
    args = ["--config", str(config), *shlex.split(flags), *QUIET, f"--trainer.max_steps={batches}",
            f"--trainer.limit_train_batches={batches}", "--trainer.max_epochs=1"]
    cli = build_cli(datamodule_class, ROOT / "recipes" / "configs" / default_config, "step_cost", args, model_class)
    clock = BatchClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if len(clock.ends) != batches:
        raise RuntimeError(f"the fit ran {len(clock.ends)} batches, not {batches}: is the training split smaller?")
    data = cli.datamodule
    return clock.seconds_per_batch(), data.hparams.batch_size, len(data.train_set)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fmnist", help="benchmarks/training.py's DATASET")
    p.add_argument("--config", type=Path, default=ROOT / "recipes" / "configs" / "fmnist_best.yaml",
                   help="the recipe configuration the variants change")
    p.add_argument("--variant", action="append", default=None,
                   help="flags added to the configuration (repeatable; '' for the configuration itself)")
    p.add_argument("--batches", type=int, default=None, help="batches a fit, odd (the first untimed; quick 3, full 21)")
    p.add_argument("--repeats", type=int, default=None, help="rounds over the variants (quick 1, full 5)")
    p.add_argument("--budget-min", type=float, default=120.0, help="the time budget of a run, in minutes")
    args = p.parse_args(argv)
    args.batches = args.batches or (3 if args.quick else 21)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.variant = args.variant if args.variant is not None else list(DEFAULT_VARIANTS)
    if args.batches < 3 or args.batches % 2 == 0 or args.repeats < 1:
        p.error("--batches must be odd and >= 3 (the first is not timed; an even number of timed batches counts a "
                "penalty every second batch at its share) and --repeats >= 1")
    if "" not in args.variant:
        p.error("the variants must include '' (the configuration itself): every variant is compared with it")
    if not args.config.is_file():
        p.error(f"no configuration at {args.config}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_threads(args.threads)
    seconds: dict[str, list[float]] = {v: [] for v in args.variant}  # a batch's seconds, per round
    shape: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for variant in args.variant:
            per_batch, batch_size, images = time_variant(args.dataset, args.config, variant, args.batches)
            seconds[variant].append(per_batch)
            shape[variant] = (batch_size, images)
    config = args.config.resolve()
    shown = str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config)
    records: list[dict[str, Any]] = []
    for variant in args.variant:
        batch_size, images = shape[variant]
        per_epoch = -(-images // batch_size)
        ms = 1000 * statistics.median(seconds[variant])
        epoch_s = ms * per_epoch / 1000
        records.append({"dataset": args.dataset, "config": shown,
                        "variant": variant, "batch_size": batch_size, "ms_per_batch": round(ms, 2),
                        "ms_min": round(1000 * min(seconds[variant]), 2), "train_samples": images,
                        "batches_per_epoch": per_epoch, "train_s_per_epoch": round(epoch_s, 1),
                        "epochs_in_budget": round(60 * args.budget_min / epoch_s, 1), "budget_min": args.budget_min,
                        "timed_batches": args.batches - 1, "repeats": args.repeats, "threads": args.threads})
    base = next(r for r in records if r["variant"] == "")
    for r in records:
        r["relative_epoch_cost"] = round(r["train_s_per_epoch"] / base["train_s_per_epoch"], 3)
    print_table(records, ["variant", "batch_size", "ms_per_batch", "train_s_per_epoch", "epochs_in_budget",
                          "relative_epoch_cost"], title=f"a training batch of {base['config']}")
    write_json("step_cost", stamp(records, load_average=load_average()), args.out, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
