"""EP and BPTT on the convergent SNN against snnTorch's convolutional SNN trained by BPTT through time, side by side
in one run: test error at equal epochs, seconds per epoch, and the memory of one training step as T grows.

    python benchmarks/baselines.py                    # FashionMNIST, the recipes' demo configs, 2 epochs each
    python benchmarks/baselines.py --epochs 5 --steps 25 50 100 200
    python benchmarks/baselines.py --quick            # tiny widths and subsets, T in 4 8: a check, not a result
    python benchmarks/baselines.py --replot benchmarks/results/baselines.json   # only redraw docs/baselines.png

The four contenders are the recipes themselves (``lightning_ep.cli.build_cli``): EP on the convergent SNN
(``recipes/configs/fmnist_demo.yaml``); BPTT on the same network, of the loss after the free phase through all T1
steps (the same config with ``--model.method=bptt --model.bptt.objective=free``) and of EP's objective (the loss after
the nudged phase, through its T2 steps: ``--model.method=bptt``, the default); and ``SnnTorchCSNN``
(``recipes/configs/fmnist_csnn_demo.yaml``: the same conv/dense widths and pooling), all on the CPU, without
validation runs (the training set is the recipes' own: 55000 images after the 5000 held out).

- Test error: after ``--epochs`` epochs, on the FashionMNIST test set (``--test-samples`` of it).
- Seconds per epoch: the training loop's wall time per epoch (validation excluded), on ``--threads`` threads.
- Memory of one training step at each T of ``--steps`` (T1 of the convergent net, T2 its config's; ``num_steps``
  of the CSNN), each in a fresh process as ``benchmarks/memory.py`` measures it: a 2-sample warm-up step, then
  one full step (batch ``--batch``, FashionMNIST train[0:batch]) of the module's own ``training_step`` (forward,
  backward, optimizer step) in a Lightning ``Trainer``; ``saved_bytes``: autograd's saved-for-backward bytes
  (``lightning_ep.memory.count_saved_bytes``), ``peak_bytes``: the resident-set high-water mark over the step
  minus the RSS before it (see memory.py).

Writes ``benchmarks/results/baselines.json`` (``--quick``: ``benchmarks/results/quick/``), prints a README-ready
markdown table, and plots the three measurements to ``docs/baselines.png`` (``--quick`` or ``--out``: next to the
JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import (  # noqa: E402
    Record,
    add_common_args,
    load_average,
    load_batch,
    print_table,
    setup_threads,
    stamp,
    write_json,
)
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from memory import MIB, _malloc_trim, _reset_peak, _status_kib  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_ep.baselines import SnnTorchCSNN  # noqa: E402
from lightning_ep.callbacks._logging import new_figure  # noqa: E402
from lightning_ep.cli import build_cli  # noqa: E402
from lightning_ep.data import FashionMNISTDataModule  # noqa: E402
from lightning_ep.memory import count_saved_bytes  # noqa: E402
from lightning_ep.module import EPLightningModule  # noqa: E402

NAME = "baselines"
PLOT = ROOT / "docs" / f"{NAME}.png"
CONFIGS = ROOT / "recipes" / "configs"
FULL_STEPS = (25, 50, 100, 200)
QUICK_STEPS = (4, 8)
# every run: on the CPU, one device, no logger, checkpoint, progress bar or validation
COMMON_FLAGS = ("--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false",
                "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0")
QUICK_WIDTHS = ("--model.network.channels=[4, 8]", "--model.network.hidden=[16]")
QUICK_CSNN_WIDTHS = ("--model.channels=[4, 8]", "--model.hidden=[16]")  # the CSNN takes them flat


@dataclass(frozen=True)
class Contender:
    """One training method on one network, built by a recipe config plus flags."""

    key: str
    method: str
    network: str
    model_class: type[LightningModule]
    config: str
    flags: tuple[str, ...]
    steps_flag: str  # the flag that sets T (T1 / num_steps)
    quick_flags: tuple[str, ...]

    def steps_of(self, model: LightningModule) -> str:
        """The time steps the trained module runs, for the table (T1/T2 or num_steps)."""
        if isinstance(model, SnnTorchCSNN):
            return f"T={model.hparams.num_steps}"
        free_loss = model.method == "bptt" and model.bptt.objective == "free"
        return f"T1={model.phases.t1}" if free_loss else f"T1={model.phases.t1}, T2={model.phases.t2}"


CONTENDERS = (
    Contender("ep", "EP", "convergent SNN", EPLightningModule, "fmnist_demo.yaml", (), "--model.phases.t1",
              ("--model.phases.t1=6", "--model.phases.t2=3")),
    Contender("bptt", "BPTT of the free loss", "convergent SNN", EPLightningModule, "fmnist_demo.yaml",
              ("--model.method=bptt", "--model.bptt.objective=free"), "--model.phases.t1", ("--model.phases.t1=6",)),
    Contender("bptt_nudged", "BPTT of EP's objective", "convergent SNN", EPLightningModule, "fmnist_demo.yaml",
              ("--model.method=bptt",), "--model.phases.t1", ("--model.phases.t1=6", "--model.phases.t2=3")),
    Contender("csnn", "BPTT", "snnTorch CSNN", SnnTorchCSNN, "fmnist_csnn_demo.yaml", (), "--model.num_steps",
              ("--model.num_steps=6",)),
)
BY_KEY = {c.key: c for c in CONTENDERS}


def recipe_flags(contender: Contender, quick: bool, extra: Sequence[str] = ()) -> list[str]:
    """The contender's flags over its config (with ``--quick``: tiny widths and few steps), then ``extra``."""
    widths = QUICK_CSNN_WIDTHS if contender.model_class is SnnTorchCSNN else QUICK_WIDTHS
    return [*COMMON_FLAGS, *contender.flags, *((*widths, *contender.quick_flags) if quick else ()), *extra]


class EpochTimer(Callback):
    """The training loop's wall seconds of each epoch, validation excluded."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = self._validation_start = 0.0
        self._validation = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._validation = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start - self._validation)
        print(f"  epoch {len(self.seconds)}: {self.seconds[-1]:.1f} s", flush=True)


def train_and_test(contender: Contender, args: argparse.Namespace) -> Record:
    """Fit the contender's recipe for ``args.epochs`` epochs, then test; its training record."""
    extra = [f"--trainer.max_epochs={args.epochs}", f"--trainer.default_root_dir={args.scratch}"]
    if args.train_subset is not None:
        extra.append(f"--data.train_subset={args.train_subset}")
    cli = build_cli(FashionMNISTDataModule, CONFIGS / contender.config, f"lightning_ep-{NAME}",
                    recipe_flags(contender, args.quick, extra), contender.model_class)
    data, model = cli.datamodule, cli.model
    if args.test_samples is not None:
        cli.trainer.limit_test_batches = math.ceil(args.test_samples / data.batch_size)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    print(f"{contender.method} on the {contender.network} ({contender.config}, {contender.steps_of(model)}):",
          flush=True)
    start = time.perf_counter()
    cli.trainer.fit(model, datamodule=data)
    fit_s = time.perf_counter() - start
    metrics = cli.trainer.test(model, datamodule=data, verbose=False)[0]
    test_samples = len(data.test_set) if args.test_samples is None else min(args.test_samples, len(data.test_set))
    record = {
        "kind": "training", "key": contender.key, "method": contender.method, "network": contender.network,
        "config": contender.config, "steps": contender.steps_of(model), "epochs": args.epochs,
        "test_error": 1.0 - float(metrics["test/acc"]), "s_per_epoch": sum(timer.seconds) / len(timer.seconds),
        "epoch_seconds": [round(s, 2) for s in timer.seconds], "fit_s": round(fit_s, 2),
        "train_samples": len(data.train_set), "test_samples": test_samples, "batch_size": data.batch_size,
        "test_spike_rates": [round(float(metrics[k]), 4) for k in sorted(metrics) if "spike_rate" in k],
        "hparams": {k: v for k, v in model.hparams.items() if isinstance(v, int | float | str | list | tuple | dict)},
    }
    print(f"  test error {100 * record['test_error']:.2f} %, {record['s_per_epoch']:.1f} s per epoch", flush=True)
    return record


# -- memory of one step, in a fresh process ------------------------------------------------------------------
class StepMemory(Callback):
    """Measures training batch 1 (batch 0 warms up): autograd's saved bytes and the peak RSS increase of the whole
    step (``training_step``, backward, optimizer step), as ``benchmarks/memory.py`` does."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}
        self._counting: Any = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx != 1:
            return
        gc.collect()
        _malloc_trim()
        self._reset = _reset_peak()
        self._rss_before = _status_kib("VmRSS")
        self._ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._counting = count_saved_bytes()
        self._saved = self._counting.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx != 1:
            return
        step_s = time.perf_counter() - self._start
        self._counting.__exit__(None, None, None)
        ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm_after = _status_kib("VmHWM")
        ru_delta = (ru_after - self._ru_before) * 1024
        if self._reset and self._rss_before is not None and hwm_after is not None:
            peak, source = (hwm_after - self._rss_before) * 1024, "VmHWM-VmRSS"
        else:
            peak, source = ru_delta, "ru_maxrss"
        self.result = {"saved_bytes": self._saved.bytes, "peak_bytes": peak, "peak_source": source,
                       "ru_maxrss_delta": ru_delta, "rss_before_bytes": (self._rss_before or 0) * 1024,
                       "step_s": step_s}


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One contender's training step at one T, measured in this (fresh) process."""
    setup_threads(config["threads"])
    contender = BY_KEY[config["key"]]
    flags = recipe_flags(contender, config["quick"], [f"{contender.steps_flag}={config['steps']}",
                                                      "--trainer.max_steps=2", "--trainer.max_epochs=1",
                                                      f"--trainer.default_root_dir={config['scratch']}"])
    cli = build_cli(FashionMNISTDataModule, CONFIGS / contender.config, f"lightning_ep-{NAME}", flags,
                    contender.model_class)
    x, y = torch.load(config["batch_file"])
    loader = DataLoader([(x[:2], y[:2]), (x, y)], batch_size=None)  # the warm-up batch, then the measured one
    meter = StepMemory()
    cli.trainer.callbacks.append(meter)
    cli.trainer.fit(cli.model, train_dataloaders=loader)
    if not meter.result:
        raise RuntimeError("the measured training step did not run")
    return meter.result


def run_child(contender: Contender, steps: int, args: argparse.Namespace, batch_file: str) -> Record:
    """One memory measurement in a fresh interpreter; its record."""
    config = {"key": contender.key, "steps": steps, "quick": args.quick, "threads": args.threads,
              "batch_file": batch_file, "scratch": args.scratch}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {contender.key} T={steps} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {contender.key:4s} T={steps:<4d} saved {result['saved_bytes'] / MIB:8.2f} MiB  peak "
          f"{result['peak_bytes'] / MIB:8.2f} MiB  ({result['step_s']:.2f} s)", flush=True)
    return {"kind": "memory", "key": contender.key, "method": contender.method, "network": contender.network,
            "T": steps, "batch": args.batch, **result}


# -- output ----------------------------------------------------------------------------------------------------
def label(record: Record) -> str:
    return f"{record['method']}, {record['network']}"


def markdown_table(records: Sequence[Record], steps: Sequence[int]) -> str:
    """The README table: one row per contender; memory cells are 'peak RSS (saved for backward)' in MiB."""
    training = [r for r in records if r["kind"] == "training"]
    memory = {(r["key"], r["T"]): r for r in records if r["kind"] == "memory"}
    epochs = training[0]["epochs"] if training else "?"
    head = ["training", "T (trained)", f"test error ({epochs} ep.)", "s / epoch",
            *(f"step memory T={t}, MiB" for t in steps)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in training:
        cells = [label(r), r["steps"], f"{100 * r['test_error']:.2f} %", f"{r['s_per_epoch']:.3g}"]
        for t in steps:
            m = memory.get((r["key"], t))
            cells.append("-" if m is None else f"{m['peak_bytes'] / MIB:.3g} ({m['saved_bytes'] / MIB:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: Sequence[Record], path: Path) -> Path:
    """Test error and seconds per epoch (bars), and the step memory against T (peak RSS solid, saved dashed)."""
    training = [r for r in records if r["kind"] == "training"]
    fig = new_figure(13, 4)
    ax_error, ax_time, ax_memory = fig.subplots(1, 3)
    names = ["\n".join(textwrap.fill(part, 12) for part in label(r).split(", ")) for r in training]
    colors = [f"C{i}" for i in range(len(training))]
    ax_error.bar(names, [100 * r["test_error"] for r in training], color=colors)
    ax_error.set(ylabel="test error (%)", title=f"test error after {training[0]['epochs'] if training else '?'} "
                                                 "epochs")
    ax_time.bar(names, [r["s_per_epoch"] for r in training], color=colors)
    ax_time.set(ylabel="seconds", title="seconds per epoch")
    for i, r in enumerate(training):
        rows = sorted((m for m in records if m["kind"] == "memory" and m["key"] == r["key"]), key=lambda m: m["T"])
        ts = [m["T"] for m in rows]
        ax_memory.plot(ts, [m["peak_bytes"] / MIB for m in rows], "o-", color=colors[i], label=f"{label(r)}: peak")
        ax_memory.plot(ts, [m["saved_bytes"] / MIB for m in rows], "s--", color=colors[i], label="saved for backward")
    steps = sorted({m["T"] for m in records if m["kind"] == "memory"})
    ax_memory.set(xscale="log", xlabel="T (time steps / T1, log)", ylabel="MiB", title="memory of one training step")
    ax_memory.set_xticks(steps, [str(t) for t in steps])
    ax_memory.minorticks_off()
    ax_memory.legend(fontsize=7)
    for ax in (ax_error, ax_time, ax_memory):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of every contender (default 2)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help=f"T of the memory measurements (default {' '.join(map(str, FULL_STEPS))}; --quick "
                             f"{' '.join(map(str, QUICK_STEPS))})")
    parser.add_argument("--contenders", nargs="+", choices=tuple(BY_KEY), default=list(BY_KEY),
                        help="which of them to run (default all)")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="training samples (default all 55000; --quick 256)")
    parser.add_argument("--test-samples", type=int, default=None, help="test samples (default 10000; --quick 500)")
    parser.add_argument("--batch", type=int, default=64, help="batch of the memory measurements (default 64)")
    parser.add_argument("--plot", type=Path, default=None,
                        help=f"the figure (default {PLOT.relative_to(ROOT)}; with --quick or --out: next to the JSON)")
    parser.add_argument("--replot", type=Path, default=None,
                        help="only redraw the figure from this results JSON (a run's output), without running")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or list(QUICK_STEPS if args.quick else FULL_STEPS)
    if args.quick:
        args.train_subset = args.train_subset or 256
        args.test_samples = args.test_samples or 500
    if args.epochs < 1 or min(args.steps) < 1 or args.batch < 2:
        parser.error("--epochs and --steps must be >= 1 and --batch >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return 0
    if args.replot is not None:
        plot(json.loads(args.replot.read_text()), args.plot or PLOT)
        return 0
    setup_threads(args.threads)
    load_start = load_average()
    contenders = [BY_KEY[k] for k in args.contenders]
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch  # the runs' root dir (LightningCLI writes its config.yaml there), the batch file
        records: list[Record] = [train_and_test(c, args) for c in contenders]
        x, y, source = load_batch(args.batch, split="train", data_dir=args.data_dir, allow_synthetic=True)
        print(f"memory of one training step, batch {args.batch} ({source}), T {args.steps}, one fresh process each",
              flush=True)
        batch_file = str(Path(scratch) / "batch.pt")
        torch.save((x.clone(), y.clone()), batch_file)  # a copy: the slice's storage is the whole dataset
        for steps in args.steps:
            records += [run_child(c, steps, args, batch_file) for c in contenders]
    print_table([r for r in records if r["kind"] == "training"],
                ["method", "network", "steps", "epochs", "test_error", "s_per_epoch", "train_samples"],
                title="training")
    print_table([{**r, "saved_MiB": r["saved_bytes"] / MIB, "peak_MiB": r["peak_bytes"] / MIB}
                 for r in records if r["kind"] == "memory"],
                ["method", "network", "T", "saved_MiB", "peak_MiB", "step_s"], title="one training step")
    print("\n" + markdown_table(records, args.steps) + "\n")
    records = stamp(records, load_avg_start=load_start, load_avg_end=load_average(), memory_data=source,
                    quick=args.quick)
    path = write_json(NAME, records, args.out, args.quick)
    plot(records, args.plot or (PLOT if not args.quick and args.out is None else path.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
