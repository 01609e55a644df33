"""Every benchmark script runs in its smallest mode (``--quick`` and tiny sizes) as a subprocess, writes its records
only where it is told (a temporary directory), and never touches the full results (``benchmarks/results/``) or
the README's figures (``docs/*.png``). A PASS/FAIL verdict is printed, and for throughput.py it sets the exit code
(a tiny run may legitimately FAIL its speed goal)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ("alignment", "curvature", "levers", "memory", "plot_training", "throughput", "time_to_accuracy",
           "training")
# the full results, these scripts' default --quick output and the README's figures
PROTECTED = ("benchmarks/results/*.json", *(f"benchmarks/results/quick/{name}.json" for name in SCRIPTS), "docs/*.png")
TINY_2C2FC = ["--threads", "1"]


def _snapshot() -> dict[str, tuple[int, int]]:
    files = [p for pattern in PROTECTED for p in ROOT.glob(pattern)]
    return {str(p.relative_to(ROOT)): (p.stat().st_mtime_ns, p.stat().st_size) for p in files}


@pytest.fixture(autouse=True)
def results_untouched() -> Iterator[None]:
    """No benchmark run of this file creates, rewrites or removes a results file or a figure of the repository."""
    before = _snapshot()
    yield
    assert _snapshot() == before


def run_benchmark(script: str, *args: str | Path, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> args`` in ``cwd`` on one thread; its output is kept for the failure message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(BENCHMARKS / script), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def verdicts(proc: subprocess.CompletedProcess) -> list[str]:
    """The PASS/FAIL lines of a run (at least one)."""
    lines = re.findall(r"^(PASS|FAIL): .+$", proc.stdout, flags=re.MULTILINE)
    assert lines, "no PASS/FAIL line\n" + explain(proc)
    return lines


def tiny_checkpoint(tmp_path: Path, **module_args: object) -> Path:
    """A checkpoint of a tiny ``EPLightningModule`` trained for one step on noise."""
    import torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ep.module import EPLightningModule

    module = EPLightningModule(channels=[4, 8], hidden=[16], t1=3, t2=2, scheduler="none", **module_args)
    data = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=8)
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    return tmp_path / "tiny.ckpt"


def records(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    assert isinstance(data, list) and data and all(isinstance(r, dict) for r in data), path
    return data


def test_throughput_quick(tmp_path):
    out = tmp_path / "throughput.json"
    proc = run_benchmark("throughput.py", "--quick", *TINY_2C2FC, "--batch", "8", "--hidden", "16", "--t1", "3",
                         "--t2", "2", "--repeats", "1", "--floor-repeats", "1", "--out", out, cwd=tmp_path)
    found = verdicts(proc)
    assert proc.returncode == (1 if "FAIL" in found else 0), explain(proc)  # any FAIL line sets exit code 1
    rows = [r for r in records(out) if r["kind"] == "throughput"]
    assert {(r["pooling"], r["dynamics"], r["update"], r["threshold"] > 0) for r in rows} == {
        (p, d, u, s) for p in ("avg", "max") for d, u, s in (("explicit", "sync", False), ("explicit", "async", False),
                                                             ("autograd", "sync", False), ("explicit", "async", True))}
    assert all(r["samples_per_s"] > 0 and r["step_over_engine_floor"] > 0 for r in rows)
    # the engine floor holds the dense products on top of the convolutions
    assert all(r["engine_floor_ms"] > r["conv_floor_ms"] > 0 for r in rows)


def test_memory_quick(tmp_path):
    out = tmp_path / "memory.json"
    proc = run_benchmark("memory.py", "--quick", *TINY_2C2FC, "--t1", "6", "--t2", "2", "--batch", "4",
                         "--hidden", "16", "--out", out, cwd=tmp_path)  # one T1: each measurement is a fresh process
    assert proc.returncode == 0, explain(proc)
    rows = {r["method"]: r for r in records(out)}
    assert set(rows) == {"ep", "bptt"} and all(r["T1"] == 6 and r["peak_bytes"] >= 0 for r in rows.values())
    assert rows["bptt"]["saved_bytes"] > rows["ep"]["saved_bytes"] > 0
    assert rows["ep"]["saved_bytes"] < 16 * 2**20  # its parameters and batch, not the storage of the whole split


@needs_fmnist
def test_alignment_quick(tmp_path):
    out = tmp_path / "alignment.json"
    proc = run_benchmark("alignment.py", "--quick", *TINY_2C2FC, "--batch", "8", "--hidden", "16", "--thresholds",
                         "0.01", "--betas", "0.05", "--t1", "20", "--t2", "8", "--train-steps", "1", "--train-batch",
                         "8", "--train-t1", "5", "--train-t2", "3", "--out", out, cwd=tmp_path)
    found = verdicts(proc)
    assert proc.returncode == (1 if "FAIL" in found else 0), explain(proc)  # the verdict sets the exit code
    rows = records(out)
    cells = {(r["spiking"], r["pooling"]) for r in rows if r["kind"] == "alignment" and r["param"] == "all"}
    assert cells == {(s, p) for s in (False, True) for p in ("avg", "max")}
    assert all(-1.0 <= r["cosine"] <= 1.0 for r in rows if r["kind"] == "alignment")
    assert {r["layer"] for r in rows if r["kind"] == "activation"} == {"conv1", "conv2"}


@needs_fmnist
def test_time_to_accuracy_quick(tmp_path):
    out = tmp_path / "time_to_accuracy.json"
    proc = run_benchmark("time_to_accuracy.py", "--quick", *TINY_2C2FC, "--budget", "1", "--eval-every", "1",
                         "--test-subset", "200", "--settings", "ours", "ref_at_our_T", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = {r["setting"]: r for r in records(out)}
    assert set(rows) == {"ours", "ref_at_our_T"}
    for r in rows.values():
        assert r["samples"] > 0 and r["test_samples"] == 200 and r["target_accuracy"] <= 0.5
        assert 0.0 <= r["last_accuracy_2000"] <= 1.0 and r["reached"] == (r["seconds"] is not None)
        assert r["evaluations"] and r["evaluations"][-1]["accuracy_2000"] == r["last_accuracy_2000"]


def test_time_to_accuracy_main_part_is_ours_against_the_reference(tmp_path):
    out = tmp_path / "time_to_accuracy_main.json"
    proc = run_benchmark("time_to_accuracy.py", "--quick", *TINY_2C2FC, "--budget", "0.1", "--eval-every", "1",
                         "--test-subset", "100", "--part", "main", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = {r["setting"]: r for r in records(out)}
    assert set(rows) == {"ours", "reference"} and rows["reference"]["t1"] == 200
    assert (rows["ours"]["curvature_bound"], rows["reference"]["curvature_bound"]) == (0.9, None)


@needs_fmnist
def test_levers_quick(tmp_path):
    """The epoch part on a few batches, then the alignment part on a checkpoint of a tiny module."""
    out = tmp_path / "levers.json"
    proc = run_benchmark("levers.py", "--quick", *TINY_2C2FC, "--part", "epoch", "--train-samples", "128",
                         "--val-samples", "100", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = records(out)
    assert len(rows) == 7 and all(r["part"] == "epoch" and 0.0 <= r["val_acc"] <= 1.0 for r in rows)
    assert sorted(r["curvature_bound"] or 0.0 for r in rows) == [0.0] * 5 + [0.9] * 2

    out = tmp_path / "levers_alignment.json"
    proc = run_benchmark("levers.py", "--quick", *TINY_2C2FC, "--part", "alignment", "--checkpoint",
                         tiny_checkpoint(tmp_path), "--bptt-t1", "20", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = records(out)
    assert len(rows) == 6 and all(r["part"] == "alignment" and -1.0 <= r["cos_mean"] <= 1.0 for r in rows)


@needs_fmnist
def test_curvature_quick(tmp_path):
    """The curvature at the end of the free phases of a tiny trained module, spiking and not."""
    ckpt = tiny_checkpoint(tmp_path, threshold=0.01)
    out = tmp_path / "curvature.json"
    proc = run_benchmark("curvature.py", "--quick", *TINY_2C2FC, "--checkpoint", f"fmnist:{ckpt}",
                         "--samples", "8", "--settled-t1", "10", "--iters", "5", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = records(out)
    assert [r["phase"] for r in rows] == ["trained", "non-spiking"]
    assert all(r["samples"] == 8 and 0.0 <= r["frac_not_minimum"] <= 1.0 and r["eig_max"] >= r["eig_median"] >= 0
               and 0.0 <= r["active_fraction"] <= 1.0 for r in rows)
    assert rows[0]["t1"] == 3 and rows[1]["t1"] == 10


@needs_fmnist
def test_training_record_goes_where_it_is_told(tmp_path):
    """A two-step recipe run of a tiny network, recorded in a temporary file (never in results/training.json);
    its logs stay in the temporary working directory."""
    out = tmp_path / "training.json"
    proc = run_benchmark(
        "training.py", "fmnist", "--record", out, "--model.channels=[4, 8]", "--model.hidden=[16]", "--model.t1=4",
        "--model.t2=2", "--data.train_subset=128", "--data.val_size=64", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false", "--note", "a test run",
        "--model.curvature_bound=0.9", "--model.curvature_iters=3", "--model.optimizer=torch.optim.AdamW",
        "--model.optimizer.weight_decay=0.05", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (record,) = records(out)
    assert record["dataset"] == "fashion_mnist" and record["global_steps"] == 2 and not record["complete"]
    assert (record["channels"], record["hidden"], record["pooling"]) == ([4, 8], [16], "avg")  # read from the net
    assert record["note"] == "a test run"
    assert (record["curvature_bound"], record["curvature_iters"], record["bptt_truncate"]) == (0.9, 3, None)
    assert record["method"] == "ep" and record["bptt_objective"] is None  # a BPTT setting, recorded for BPTT runs
    assert (record["optimizer"], record["weight_decay"]) == ("AdamW", 0.05)  # read from the optimizer that trained
    assert record["curve"] and "alignment_cos_all" in record["curve"][-1]
    assert record["activations"] is None  # no ActivationDiagnostics callback in this run
    assert 0.0 <= record["test_error"] <= 1.0


@needs_fmnist
def test_training_on_the_whole_training_set_records_no_curve(tmp_path):
    """With ``--data.val_size 0`` (the whole official training set, no validation split) the paper config still
    trains, checkpoints and tests: no EP-vs-BPTT cosine is measured (it needs validation images), the record has an
    empty curve and every training sample counted, and ``last.ckpt`` is written though ``val/acc`` never is."""
    out, root = tmp_path / "training.json", tmp_path / "root"
    proc = run_benchmark(
        "training.py", "fmnist", "--config", ROOT / "recipes" / "configs" / "fmnist_paper.yaml", "--record", out,
        "--model.channels=[4, 8]", "--model.hidden=[16]", "--model.t1=4", "--model.t2=2",
        "--model.curvature_iters=3", "--data.train_subset=128", "--data.val_size=0", "--trainer.max_epochs=1",
        "--trainer.limit_test_batches=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (record,) = records(out)
    assert (record["train_samples"], record["global_steps"], record["epochs"]) == (128, 2, 1.0)
    assert record["curve"] == []
    assert list(root.rglob("last.ckpt"))
    assert 0.0 <= record["test_error"] <= 1.0


def test_training_record_of_a_resumed_run_continues_its_curve_and_clock(tmp_path):
    """A run cut after its first epoch and resumed from its checkpoint records both epochs' points, the wall time
    of both parts, the checkpoint it resumed from, and the Figure 2/3 statistics of every step (the
    ActivationDiagnostics callback's, measured every step) of both parts."""
    out, root = tmp_path / "training.json", tmp_path / "root"
    tiny = ["--model.channels=[4, 8]", "--model.hidden=[16]", "--model.t1=4", "--model.t2=2",
            "--data.train_subset=128", "--data.val_size=64", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=1.0", f"--trainer.default_root_dir={root}", "--record", out,
            "--trainer.callbacks+=lightning_ep.callbacks.ActivationDiagnostics", "--trainer.callbacks.every_n_steps=1",
            "--trainer.callbacks.plot=false"]
    first = run_benchmark("training.py", "fmnist", *tiny, "--trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, explain(first)
    (checkpoint,) = root.rglob("*.ckpt")
    second = run_benchmark("training.py", "fmnist", *tiny, "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}",
                           cwd=tmp_path)
    assert second.returncode == 0, explain(second)
    part1, part2 = records(out)
    assert (part1["parts"], part1["resumed_from"], part1["epochs"]) == (1, None, 1.0)
    assert (part2["parts"], part2["resumed_from"], part2["epochs"]) == (2, str(checkpoint), 2.0)
    assert [p["epoch"] for p in part2["curve"]] == [1.0, 2.0]
    assert part2["curve"][0] == part1["curve"][0]  # the first part's point, from the checkpoint
    assert part2["curve"][1]["wall_s"] > part2["curve"][0]["wall_s"]
    assert part2["wall_s"] > part2["curve"][0]["wall_s"]  # the clock counts the first part too
    assert part2["global_steps"] == 2 * part1["global_steps"]
    steps = list(range(part2["global_steps"]))  # 2 batches an epoch: steps 0, 1 in the first part, 2, 3 after
    assert [a["step"] for a in part1["activations"]] == steps[:2] and [a["step"] for a in part2["activations"]] == steps
    assert part2["activations"][:2] == part1["activations"]  # restored from the checkpoint
    assert all(len(a["mean"]) == 2 and len(a["mean"][0]) == len(a["quantities"]) == 6 for a in part2["activations"])


def test_plot_training_draws_given_records(tmp_path):
    def run(dataset: str, cos: float) -> dict:
        curve = [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "val_change_free": 0.01 / (e + 1), "alignment_cos_all": cos,
                  "alignment_cos_min": cos - 0.1} for e in (0.5, 1.0, 1.5)]
        return {"dataset": dataset, "method": "ep", "spiking": True, "threshold": 0.01, "pooling": "avg",
                "hidden": [256], "epochs": 1.5, "complete": True, "test_error": 0.2, "curve": curve}

    def maxed(spiking: bool) -> dict:
        quantities = ["forward_sum", "backward_sum", "x_forward", "y_forward", "x_backward", "y_backward"]
        history = [{"step": step, "quantities": quantities, "std": [[1.0] * 6] * 2,
                    "mean": [[100.0 - step, 50.0 + step, 0.3, 0.1, 0.1, 0.2], [90.0, 30.0 - step, 0.1, 0.1, 0.1, 0.0]]}
                   for step in (0, 2, 4)]
        return {**run("fashion_mnist", 0.7), "pooling": "max", "spiking": spiking, "threshold": 0.01 * spiking,
                "global_steps": 6, "activations": history}

    def full(method: str, val_accs: list[float], **fields: object) -> dict:
        curve = [{"epoch": float(e), "val_acc": a, "val_change_free": 0.01} for e, a in enumerate(val_accs, 1)]
        return {**run("fashion_mnist", 0.8), "method": method, "epochs": len(val_accs), "max_epochs": len(val_accs),
                "t1": 30, "t2": 10, "beta": 0.3, "batch_size": 64, "curvature_bound": 0.9, "curvature_iters": 30,
                "command": "python benchmarks/training.py fmnist", "curve": curve, **fields}

    # EP against BPTT: the full BPTT run meets the EP run of its settings (an EP run older than the optimizer field
    # counts as Adam), not the AdamW one (named in its command only), nor the 10-round one; the demo BPTT is left out
    bptt = full("bptt", [0.80, 0.85, 0.88], bptt_objective="nudged", optimizer="Adam")
    ep = full("ep", [0.82, 0.86, 0.89])
    adamw = full("ep", [0.71, 0.76, 0.77], command="python benchmarks/training.py fmnist --model.optimizer "
                 "torch.optim.AdamW --model.optimizer.lr 0.001")
    fewer_rounds = full("ep", [0.72, 0.75, 0.78], curvature_iters=10)
    demo = full("bptt", [0.61, 0.62], bptt_objective="nudged")

    results = tmp_path / "training.json"
    partial = {**maxed(True), "complete": False}  # a cut run is left out of the pooling figure
    results.write_text(json.dumps([run("fashion_mnist", 0.8), run("mnist", 0.9), maxed(True), maxed(False), partial,
                                   bptt, ep, adamw, fewer_rounds, demo]))
    curves, gradient, pooling = tmp_path / "curves.png", tmp_path / "gradient.png", tmp_path / "pooling.png"
    methods = tmp_path / "methods.png"
    proc = run_benchmark("plot_training.py", "--results", results, "--out", curves, "--gradient-out", gradient,
                         "--pooling-out", pooling, "--methods-out", methods, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert curves.stat().st_size > 10_000 and gradient.stat().st_size > 10_000 and pooling.stat().st_size > 10_000
    assert methods.stat().st_size > 10_000
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("epoch | BPTT"))
    assert lines[start + 1:start + 4] == ["1 | 80.00 | 82.00", "2 | 85.00 | 86.00", "3 | 88.00 | 89.00"], proc.stdout
    assert lines[start].count(" | ") == 2 and not any(v in proc.stdout for v in ("71.00", "72.00", "61.00"))
    table = [line for line in proc.stdout.splitlines() if "forward / backward" in line]
    assert len(table) == 6  # start, middle and end of the two complete max-pooling runs
    assert "step 2 (middle): forward / backward conv1 98.0 / 52.0, conv2 90.0 / 28.0" in table[1]
