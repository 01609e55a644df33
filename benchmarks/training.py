"""Train with a recipe config and record the run in ``benchmarks/results/training.json``.

    python benchmarks/training.py fmnist --config recipes/configs/fmnist_paper.yaml [any recipe flags]
    python benchmarks/training.py mnist --config recipes/configs/mnist_paper.yaml --trainer.max_time 00:02:00:00
    python benchmarks/training.py fmnist --record /tmp/trial.json --data.train_subset 640   # elsewhere than results/
    python benchmarks/training.py fmnist --note "cores shared with ... for 10 minutes"          # a note in the record
    python benchmarks/training.py fmnist [the same flags] --ckpt_path runs/.../last.ckpt     # resume a cut run
    python benchmarks/training.py fmnist --data.val_size 0   # the whole training set: no validation, no curve
    python benchmarks/training.py fmnist-csnn --config recipes/configs/fmnist_csnn_best.yaml   # snnTorch's CSNN
    python benchmarks/training.py mnist-csnn --config recipes/configs/mnist_csnn_best.yaml     # (on MNIST)
(a resumed run keeps Lightning's Timer: its ``--trainer.max_time`` counts the earlier parts too)

Each record: dataset, method ("ep"/"bptt"/"csnn"), spiking, pooling, epochs (trained, fractional), test_error (a
fraction), wall_s (fit + test; for a resumed run, the earlier parts' fit up to their checkpoint too), hardware (the
last part's), command, complete (all configured epochs ran, not cut by max_time/max_steps or a train subset), parts
(1 + resumes), hardware_parts (each part's hardware; None for a part whose checkpoint predates the field),
resumed_from (the checkpoint of the last resume, or None), plus the settings that matter (threshold, hidden, t1, t2,
beta, optimizer and weight_decay, bptt_truncate, bptt_objective (BPTT runs), curvature_bound, its iters and
every_n_batches (curvature_iters, curvature_every), batch_size, seed, shift and hflip (the augmentation), eval_hflip
(test-time mirror averaging), train_samples, load_avg_start and load_avg_end (the 1/5/15-minute load averages of the
machine as the run starts and ends: other jobs on the cores slow it); records before a field existed name the setting
in their command only; a CSNN run, method "csnn", records its network, num_steps, leak_beta, surrogate and loss instead
of EP's settings), ``activations`` (the paper's Figure 2/3 statistics along training, with an ``ActivationDiagnostics``
callback; else None) and ``curve``: one point per validation (see ``CurveRecorder``), printed as it grows. EP runs
measure the cosine between the EP and the BPTT gradient every ``ALIGNMENT_EVERY`` steps on a fixed batch of validation
images; the BPTT gradient goes through ``ALIGNMENT_BPTT_T1`` free steps of the network without spikes, where it has
settled: the gradient the EP estimate aims at. (Through the module's own T1, unsettled, BPTT's gradient is a different
and unstable one; through the spikes, the straight-through gradient grows without bound at a spiking fixed point.)
Records made before this choice (the first paper-config FashionMNIST run) used the spiking network through 100 steps.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS_DIR, append_record, hardware, load_average, load_averages  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

from lightning_ep.baselines import SnnTorchCSNN  # noqa: E402
from lightning_ep.blocks import SpikingConv2d, SpikingLinear  # noqa: E402
from lightning_ep.callbacks import ActivationDiagnostics, GradientAlignment  # noqa: E402
from lightning_ep.callbacks.activation_diagnostics import QUANTITIES  # noqa: E402
from lightning_ep.cli import build_cli, fit_and_test  # noqa: E402
from lightning_ep.data import FashionMNISTDataModule, MNISTDataModule  # noqa: E402
from lightning_ep.module import EPLightningModule  # noqa: E402
from lightning_ep.network import ConvergentNetwork  # noqa: E402

ALIGNMENT_EVERY = 430  # optimizer steps between two EP-vs-BPTT measurements (twice an epoch at batch 64)
ALIGNMENT_SAMPLES = 64  # validation images in the fixed batch they are measured on
ALIGNMENT_BPTT_T1 = 200  # BPTT through 200 free steps of the network without spikes: the gradient at its settled
# fixed point (the spiking network's straight-through BPTT gradient grows without bound at a spiking fixed point)
DATASETS = {  # the first argument: (DataModule, default config, LightningModule)
    "fmnist": (FashionMNISTDataModule, "fmnist_demo.yaml", EPLightningModule),
    "mnist": (MNISTDataModule, "mnist_demo.yaml", EPLightningModule),
    "fmnist-csnn": (FashionMNISTDataModule, "fmnist_csnn_demo.yaml", SnnTorchCSNN),
    "mnist-csnn": (MNISTDataModule, "mnist_csnn_demo.yaml", SnnTorchCSNN),
}


def network_summary(net: ConvergentNetwork) -> dict[str, object]:
    """The record's network fields, read from the network itself (whichever arguments built it): the pooling of
    its conv layers (one name when all agree), their channels and the hidden dense widths."""
    convs = [b for b in net.blocks if isinstance(b, SpikingConv2d)]
    dense = [b for b in net.blocks if isinstance(b, SpikingLinear)]
    if net.readout is None:
        dense = dense[:-1]  # the output layer (mse) is not a hidden layer
    poolings = sorted({str(b.pooling) for b in convs})
    return {"pooling": poolings[0] if len(poolings) == 1 else poolings,
            "channels": [b.out_shape[0] for b in convs], "hidden": [b.out_shape[0] for b in dense]}


def ep_fields(model: EPLightningModule) -> dict[str, object]:
    """The record's fields of an EP (or BPTT) run: method, network and the phases' settings."""
    phases, curvature = model.phases, model.curvature
    return {
        "method": model.method, "spiking": model.net.spiking, **network_summary(model.net),
        "threshold": model.net.threshold, "t1": phases.t1, "t2": phases.t2, "beta": model.ep.beta,
        "loss": model.network_config.loss, "label_smoothing": model.network_config.label_smoothing,
        "start": phases.start, "omega": phases.omega, "tol": phases.tol,
        "bptt_truncate": model.bptt.truncate,
        "bptt_objective": model.bptt.objective if model.method == "bptt" else None,
        "curvature_bound": curvature.bound if curvature is not None else None,
        "curvature_iters": curvature.iters if curvature is not None else None,
        "curvature_every": curvature.every_n_batches if curvature is not None else None,
    }


def csnn_fields(model: SnnTorchCSNN) -> dict[str, object]:
    """The record's fields of an snnTorch CSNN run (method "csnn"): its network and neuron settings."""
    h = model.hparams
    return {"method": "csnn", "spiking": True, "pooling": h.pooling, "channels": list(h.channels),
            "hidden": list(h.hidden), "num_steps": h.num_steps, "leak_beta": h.beta, "surrogate": h.surrogate,
            "loss": h.loss}


def optimizer_summary(trainer: Trainer) -> dict[str, object]:
    """The record's optimizer fields, read from the optimizer that trained (whichever flags chose it): its class
    and the first parameter group's weight decay (None when it has none)."""
    if not trainer.optimizers:
        return {"optimizer": None, "weight_decay": None}
    opt = trainer.optimizers[0]
    return {"optimizer": type(opt).__name__, "weight_decay": opt.param_groups[0].get("weight_decay")}


def activation_history(trainer: Trainer) -> list[dict[str, object]] | None:
    """The paper's Figure 2/3 statistics along training, when the run has an ``ActivationDiagnostics`` callback
    (``--trainer.callbacks+=lightning_ep.callbacks.ActivationDiagnostics``): per measurement, its step and the mean
    and std of each quantity (rows: conv layers; columns: ``QUANTITIES``). None without the callback."""
    diagnostics = [c for c in trainer.callbacks if isinstance(c, ActivationDiagnostics)]
    if not diagnostics:
        return None
    return [{"step": step, "quantities": list(QUANTITIES), "mean": np.round(mean, 5).tolist(),
             "std": np.round(std, 5).tolist()} for step, mean, std in diagnostics[0].history]


def epochs_trained(trainer: Trainer) -> float:
    """Epochs trained so far, fractional within an epoch (and when a run is cut)."""
    return trainer.global_step / max(1, trainer.num_training_batches)


class CurveRecorder(Callback):
    """Keeps one point per validation run: the learning curve stored with the record. Each point: the fractional epoch,
    wall seconds, the machine's 1-minute load average (``load_avg_1m``; None without one), the validation metrics
    (accuracy, loss, the free phase's last state change, its steps and the spike rate per layer), the training batches
    since the last point (``train_acc``: their mean accuracy, on augmented images where augmentation is on, as the
    weights change; for EP and BPTT the mean steps actually run per phase and the mean last state change of the free
    phase) and, with a ``GradientAlignment`` callback, its latest EP-vs-BPTT cosine. The points and the wall time so
    far go into every checkpoint: a run resumed from one (``--ckpt_path``) continues its curve and its clock (the time
    between that checkpoint and the cut is lost, not counted), and the hardware of each part (a run resumed on another
    machine names both)."""

    def __init__(self, alignment: GradientAlignment | None = None) -> None:
        self.points: list[dict[str, float | None]] = []
        self.start = time.perf_counter()
        self.earlier_s = 0.0  # wall seconds of the parts before a resume
        self.parts = 1  # 1 + how many times the run was resumed
        self.hardware_parts: list[str | None] = [hardware()]  # where each part ran (None: not in its checkpoint)
        self.alignment = alignment
        self._train: dict[str, float] = {}
        self._batches = 0

    def elapsed(self) -> float:
        """Wall seconds of the fit so far, earlier parts included."""
        return self.earlier_s + time.perf_counter() - self.start

    def state_dict(self) -> dict[str, object]:
        return {"points": self.points, "wall_s": self.elapsed(), "parts": self.parts,
                "hardware_parts": self.hardware_parts}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.points = list(state_dict["points"])
        self.earlier_s = float(state_dict["wall_s"])
        self.parts = int(state_dict["parts"]) + 1
        earlier = state_dict.get("hardware_parts") or [None] * (self.parts - 1)  # older checkpoints lack it
        self.hardware_parts = [*earlier, hardware()]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        self._batches += 1
        metrics = trainer.callback_metrics  # this batch's accuracy (on augmented images where augmentation is on)
        accuracy = metrics.get("train/acc_step", metrics.get("train/acc"))
        self._add("train_acc", float(accuracy) if accuracy is not None else float("nan"))
        result = getattr(pl_module, "last_result", None)  # an EP or BPTT step's phases (None for other modules)
        if result is None:
            return
        for name, phase in result.phases.items():
            self._add(f"train_steps_{name}", phase.steps)
        free = result.phases["free"]
        self._add("train_change_free", free.last_change)
        self._add("train_mean_change_free", free.mean_change)

    def _add(self, key: str, value: float) -> None:
        self._train[key] = self._train.get(key, 0.0) + value

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        loads = load_averages()
        point: dict[str, float | None] = {"epoch": round(epochs_trained(trainer), 3),
                                          "wall_s": round(self.elapsed(), 3),
                                          "load_avg_1m": None if loads is None else round(loads[0], 2)}
        for key, value in metrics.items():
            if key.startswith("val/"):
                point[key.replace("/", "_")] = round(float(value), 6)
        for key, total in self._train.items():
            point[key] = round(total / max(1, self._batches), 4)
        self._train, self._batches = {}, 0
        if self.alignment is not None and self.alignment.steps:
            point["alignment_step"] = self.alignment.steps[-1]
            point["alignment_cos_all"] = round(self.alignment.all_cosines[-1], 4)
            point["alignment_cos_min"] = round(min(v[-1][0] for v in self.alignment.history.values()), 4)
        self.points.append(point)
        print(f"curve: {json.dumps(point)}", flush=True)


def main(argv: list[str]) -> dict:
    if not argv or argv[0] not in DATASETS:
        raise SystemExit(f"usage: python benchmarks/training.py {{{'|'.join(DATASETS)}}} [recipe flags]")
    name, args = argv[0], list(argv[1:])
    path = RESULTS_DIR / "training.json"
    if "--record" in args:  # another file than the results (trial runs)
        i = args.index("--record")
        path = Path(args[i + 1])
        del args[i : i + 2]
    note = None
    if "--note" in args:  # what the record should say about how the run went (e.g. cores shared)
        i = args.index("--note")
        note = args[i + 1]
        del args[i : i + 2]
    datamodule_class, default_config, model_class = DATASETS[name]
    cli = build_cli(datamodule_class, ROOT / "recipes" / "configs" / default_config, f"lightning_ep-{name}", args,
                    model_class)
    alignment = None
    if isinstance(cli.model, EPLightningModule) and cli.model.method == "ep" and cli.datamodule.hparams.val_size > 0:
        # the EP-vs-BPTT cosine along training, on a fixed batch of validation images (none with --data.val_size 0,
        # which trains on the whole official training set: then the record has no curve and no cosine)
        alignment = GradientAlignment(every_n_steps=ALIGNMENT_EVERY, bptt_t1=ALIGNMENT_BPTT_T1,
                                      held_out=ALIGNMENT_SAMPLES, plot=False, bptt_spiking=False)
        cli.trainer.callbacks.append(alignment)
    curve = CurveRecorder(alignment)
    cli.trainer.callbacks.append(curve)
    start, load_start = time.perf_counter(), load_average()
    metrics = fit_and_test(cli)
    wall = time.perf_counter() - start + curve.earlier_s
    model, trainer, data = cli.model, cli.trainer, cli.datamodule
    epochs_done = round(epochs_trained(trainer), 2)
    complete = (trainer.max_epochs is not None and epochs_done >= trainer.max_epochs
                and data.hparams.train_subset is None and trainer.max_steps in (-1, None))
    record = {
        "dataset": "fashion_mnist" if name.startswith("fmnist") else "mnist",
        **(ep_fields(model) if isinstance(model, EPLightningModule) else csnn_fields(model)), "epochs": epochs_done,
        "test_error": round(1.0 - float(metrics["test/acc"]), 6), "wall_s": round(wall, 3), "hardware": hardware(),
        "load_avg_start": load_start, "load_avg_end": load_average(),
        "command": shlex.join(["python", "benchmarks/training.py", *argv]), "complete": bool(complete),
        "lr": trainer.optimizers[0].defaults["lr"], **optimizer_summary(trainer),
        "batch_size": data.hparams.batch_size, "seed": cli.config.get("seed_everything"),
        "shift": data.hparams.get("shift", 0), "hflip": data.hparams.get("hflip", False),
        "eval_hflip": model.eval_hflip,
        "train_samples": len(data.train_set) if data.train_set is not None else None,
        "max_epochs": trainer.max_epochs, "global_steps": trainer.global_step,
        "parts": curve.parts, "hardware_parts": curve.hardware_parts,
        "resumed_from": cli.config.get("ckpt_path"),
        # spikes per neuron per step of the free phase on the test set, per layer (spiking runs)
        "test_spike_rates": [round(float(metrics[k]), 4) for k in sorted(metrics) if k.startswith("test/spike_rate")],
        "test_change_free": round(float(metrics["test/change_free"]), 6) if "test/change_free" in metrics else None,
        "curve": curve.points,
        "activations": activation_history(trainer),
    }
    if note is not None:
        record["note"] = note
    if trainer.is_global_zero:
        append_record(path, record)
        print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
