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
import torch
from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ("alignment", "curvature", "eval_hflip", "levers", "memory", "plot_training", "step_cost", "throughput",
           "time_to_accuracy", "training")
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


def tiny_checkpoint(tmp_path: Path, threshold: float = 0.0) -> Path:
    """A checkpoint of a tiny ``EPLightningModule`` trained for one step on noise."""
    import torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ep.module import EPLightningModule

    module = EPLightningModule(network={"channels": [4, 8], "hidden": [16], "threshold": threshold},
                               phases={"t1": 3, "t2": 2}, curvature=None, optim={"scheduler": "none"})
    data = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=8)
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    return tmp_path / "tiny.ckpt"


def _gradient(net: torch.nn.Module, objective: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flattened gradient of ``objective`` by parameter name, and all of them together (``'all'``)."""
    names, params = zip(*net.named_parameters(), strict=True)
    flat = [g.flatten() for g in torch.autograd.grad(objective, params)]
    return {**dict(zip(names, flat, strict=True)), "all": torch.cat(flat)}


def alignment_cosines(batch: int, hidden: int, beta: float, t1: int, t2: int, threshold: float = 0.01,
                      ) -> tuple[dict[tuple, tuple[float, float]], dict[str, float]]:
    """alignment.py's cells, computed here from its description: per pooling, the 2C2FC net (seed 0, no spikes)
    trained by one EP step (Adam 3e-4, beta 0.2, T1 5, T2 3, async) on FashionMNIST train[0:8], then in float64 on
    test[0:batch] the cosine of each cell's EP gradient (symmetric, async; dithered: seed 0, the last 3/5 of T2
    averaged) to the BPTT gradient through T1 steps of the cell's network and to that of the network without spikes,
    per tensor and over all parameters. Returns them by (pooling, threshold, dither, param), and the training loss
    of each pooling's step."""
    from lightning_ep import bptt_loss, equilibrium_propagation, two_conv_two_dense
    from lightning_ep.data import load_split

    train_x, train_y = load_split("fashion_mnist", train=True)
    test_x, test_y = load_split("fashion_mnist", train=False)
    x, y = test_x[:batch].double(), test_y[:batch]
    out, losses = {}, {}
    for pooling in ("avg", "max"):
        torch.manual_seed(0)
        net = two_conv_two_dense(pooling=pooling, hidden=hidden, threshold=0.0)
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)
        step = equilibrium_propagation(net, train_x[:8], train_y[:8], beta=0.2, t1=5, t2=3, update="async")
        opt.zero_grad()
        step.surrogate.backward()
        opt.step()
        losses[pooling] = float(step.loss)
        net = net.double()
        bptt = {}
        for t in (0.0, threshold):
            net.threshold = t
            bptt[t] = _gradient(net, bptt_loss(net, x, y, t1=t1, update="async").loss)
        for t, dither in ((0.0, False), (threshold, False), (threshold, True)):
            net.threshold = t
            ep = _gradient(net, equilibrium_propagation(
                net, x, y, beta=beta, t1=t1, t2=t2, estimator="symmetric", update="async",
                dither=torch.Generator().manual_seed(0) if dither else None,
                average_last=max(1, 3 * t2 // 5) if dither else 0).surrogate)
            for name, g in ep.items():
                cosines = [float(g @ ref[name] / (g.norm() * ref[name].norm())) for ref in (bptt[t], bptt[0.0])]
                out[(pooling, t, dither, name)] = (cosines[0], cosines[1])
    return out, losses


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
    # every cosine (to spiking and to non-spiking BPTT) against the gradients of the same cells computed here
    expected, train_loss = alignment_cosines(batch=8, hidden=16, beta=0.05, t1=20, t2=8)
    aligned = [r for r in rows if r["kind"] == "alignment"]
    assert len(aligned) == len(expected) == 6 * 9  # 3 cells x 2 poolings, 8 tensors and all parameters each
    for r in aligned:
        cos, cos_nonspiking = expected[(r["pooling"], r["threshold"], r["dither"], r["param"])]
        where = (r["pooling"], r["threshold"], r["dither"], r["param"])
        assert r["train_loss_last"] == pytest.approx(train_loss[r["pooling"]], rel=1e-6), "the replica trains apart"
        assert r["cosine"] == pytest.approx(cos, abs=1e-6) and r["cosine_nonspiking"] == pytest.approx(
            cos_nonspiking, abs=1e-6), where
    for total in (r for r in aligned if r["param"] == "all"):  # each cell's smallest cosine over its tensors
        cell = [r for r in aligned if r["param"] != "all" and all(
            r[k] == total[k] for k in ("pooling", "threshold", "dither", "beta"))]
        assert total["min_cosine"] == min(r["cosine"] for r in cell)
        assert total["min_cosine_nonspiking"] == min(r["cosine_nonspiking"] for r in cell)
    worst = min(r["cosine"] for r in aligned if (r["pooling"], r["threshold"], r["param"] != "all") == ("avg", 0, True))
    verdict = f"{'PASS' if worst >= 0.99 else 'FAIL'}: non-spiking avg pooling at beta 0.05, min cosine over tensors"
    assert f"{verdict} {worst:.5f}" in proc.stdout, proc.stdout[-2000:]
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
        assert r["reached"] == (r["seconds"] is not None)
        assert r["evaluations"] and r["evaluations"][-1]["accuracy_2000"] == r["last_accuracy_2000"]
        for point in r["evaluations"]:  # the first 2,000 of 200 test images are the 200: correct / 200 each time
            correct = round(point["accuracy_2000"] * 200)
            assert 0 <= correct <= 200 and point["accuracy_2000"] == correct / 200, point
            assert point["test_accuracy"] in (None, point["accuracy_2000"]), point
        full = [p["test_accuracy"] for p in r["evaluations"] if p["test_accuracy"] is not None]
        assert r["test_accuracy"] == (full[-1] if full else None)
        last = r["evaluations"][-1]["test_accuracy"]  # reached at the last evaluation, if at all
        assert r["reached"] == (last is not None and last >= r["target_accuracy"])


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
    assert len(rows) == 7 and all(r["part"] == "epoch" for r in rows)
    for r in rows:  # an accuracy over the 100 held-out images: correct / 100
        correct = round(r["val_acc"] * 100)
        assert 0 <= correct <= 100 and r["val_acc"] == correct / 100, r
    assert sorted(r["curvature_bound"] or 0.0 for r in rows) == [0.0] * 5 + [0.9] * 2

    out = tmp_path / "levers_alignment.json"
    ckpt = tiny_checkpoint(tmp_path)
    proc = run_benchmark("levers.py", "--quick", *TINY_2C2FC, "--part", "alignment", "--checkpoint", ckpt,
                         "--bptt-t1", "20", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = records(out)
    assert len(rows) == 6 and all(r["part"] == "alignment" for r in rows)
    # the cosine recomputed here: EP (beta 0.2, from the feed-forward sweep) against BPTT of the network without
    # spikes through 20 steps, on the quick run's one batch, FashionMNIST test[0:64]
    from lightning_ep import bptt_loss, equilibrium_propagation
    from lightning_ep.data import load_split
    from lightning_ep.module import EPLightningModule

    net = EPLightningModule.load_from_checkpoint(ckpt, map_location="cpu").net
    xs, ys = load_split("fashion_mnist", train=False)
    x, y = xs[:64], ys[:64]
    net.threshold = 0.0
    ref = _gradient(net, bptt_loss(net, x, y, 20, start="feedforward").loss)["all"].double()
    for r in rows:
        g = _gradient(net, equilibrium_propagation(net, x, y, 0.2, r["t1"], r["t2"], start="feedforward",
                                                   omega=r["omega"]).surrogate)["all"].double()
        cos = float(g @ ref / (g.norm() * ref.norm()))
        assert r["cos_mean"] == pytest.approx(cos, abs=1e-5) and r["cos_per_batch"] == [round(r["cos_mean"], 4)], r


@needs_fmnist
def test_step_cost_quick(tmp_path):
    """A batch's cost of the beyond-paper FashionMNIST config and two variants: the arithmetic of an epoch and of a
    budget from each variant's batch time, the configuration as the reference; bad arguments are refused."""
    out = tmp_path / "step_cost.json"
    proc = run_benchmark("step_cost.py", "--quick", *TINY_2C2FC, "--variant", "", "--variant",
                         "--model.curvature null", "--variant", "--data.batch_size 128", "--budget-min", "60",
                         "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    rows = {r["variant"]: r for r in records(out)}
    assert list(rows) == ["", "--model.curvature null", "--data.batch_size 128"]
    assert [r["batch_size"] for r in rows.values()] == [64, 64, 128]
    assert [r["batches_per_epoch"] for r in rows.values()] == [860, 860, 430]  # 55,000 training images
    for r in rows.values():
        assert r["ms_min"] <= r["ms_per_batch"] and r["timed_batches"] == 2 and r["repeats"] == 1
        assert r["train_s_per_epoch"] == pytest.approx(r["ms_per_batch"] * r["batches_per_epoch"] / 1000, abs=0.06)
        assert r["epochs_in_budget"] == pytest.approx(3600 / r["train_s_per_epoch"], abs=0.06)  # one decimal
        assert r["relative_epoch_cost"] == pytest.approx(r["train_s_per_epoch"] / rows[""]["train_s_per_epoch"],
                                                         abs=1e-3)
        assert r["config"] == "recipes/configs/fmnist_best.yaml" and "threads" in r["hardware"]
    for bad, why in ((["--variant", "--model.curvature null"], "must include ''"),
                     (["--batches", "4"], "must be odd")):
        proc = run_benchmark("step_cost.py", "--quick", *bad, "--out", out, cwd=tmp_path)
        assert proc.returncode == 2 and why in proc.stderr, explain(proc)


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
    assert all(r["samples"] == 8 and r["eig_max"] >= r["eig_median"] >= 0 for r in rows)
    assert rows[0]["t1"] == 3 and rows[1]["t1"] == 10
    # the figures recomputed here: the free phase of the module's settings (spiking, then without spikes) on
    # FashionMNIST test[0:8], the eigenvalues of the coupling over its active units (5 rounds, seed 0)
    from lightning_ep import free_phase
    from lightning_ep.data import load_split
    from lightning_ep.module import EPLightningModule
    from lightning_ep.stability import active_coupling_eigenvalue

    module = EPLightningModule.load_from_checkpoint(ckpt, map_location="cpu")
    net, phases = module.net, module.phases
    x = load_split("fashion_mnist", train=False)[0][:8]
    for r, threshold in zip(rows, (net.threshold, 0.0), strict=True):  # trained: spiking, as the module
        net.threshold = threshold
        with torch.no_grad():
            s = free_phase(net, x, r["t1"], phases.update, "explicit", None, phases.start, phases.omega).state.s
            eig = active_coupling_eigenvalue(net, s, 5, torch.Generator().manual_seed(0))
        units = torch.cat([t.flatten() for t in s])
        assert r["frac_not_minimum"] == pytest.approx(float((eig >= 1).double().mean())), r
        assert (r["eig_max"], r["eig_median"]) == pytest.approx((float(eig.max()), float(eig.median())), rel=1e-5)
        assert r["active_fraction"] == pytest.approx(float(((units > 0) & (units < 1)).double().mean())), r


@needs_fmnist
def test_eval_hflip_quick(tmp_path):
    """The test error of a tiny trained module without and with mirror averaging, on the first test images."""
    ckpt = tiny_checkpoint(tmp_path, threshold=0.01)
    out = tmp_path / "eval_hflip.json"
    proc = run_benchmark("eval_hflip.py", "fmnist", ckpt, "--quick", *TINY_2C2FC, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (row,) = records(out)
    assert (row["dataset"], row["test_images"], row["global_step"]) == ("fashion_mnist", 1000, 1)
    assert row["trained_by"] is None and "threads" in row["hardware"]
    # the errors recomputed here: each image alone, and each image's logits averaged with its mirror's, the
    # mirrors in passes of their own
    from lightning_ep.data import load_split
    from lightning_ep.module import EPLightningModule

    model = EPLightningModule.load_from_checkpoint(ckpt, map_location="cpu")
    xs, ys = load_split("fashion_mnist", train=False)
    x, y = xs[:1000], ys[:1000]
    with torch.no_grad():
        logits, mirrored = model(x), model(x.flip(-1))
    plain = 1.0 - float((logits.argmax(1) == y).double().mean())
    averaged = 1.0 - float(((logits + mirrored).argmax(1) == y).double().mean())
    assert (row["test_error"], row["test_error_eval_hflip"]) == pytest.approx((plain, averaged), abs=1e-6)
    assert row["difference"] == pytest.approx(averaged - plain, abs=1e-6)
    proc = run_benchmark("eval_hflip.py", "fmnist", tmp_path / "none.ckpt", "--quick", "--out", out, cwd=tmp_path)
    assert proc.returncode != 0 and "no such checkpoint" in proc.stderr, explain(proc)


@needs_fmnist
def test_training_record_goes_where_it_is_told(tmp_path):
    """A two-step recipe run of a tiny network, recorded in a temporary file (never in results/training.json);
    its logs stay in the temporary working directory."""
    out = tmp_path / "training.json"
    proc = run_benchmark(
        "training.py", "fmnist", "--record", out, "--model.network.channels=[4, 8]", "--model.network.hidden=[16]",
        "--model.phases.t1=4", "--model.phases.t2=2", "--data.train_subset=128", "--data.val_size=64",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false", "--note", "a test run",
        "--model.curvature.bound=0.9", "--model.curvature.iters=3", "--model.optim.optimizer=adamw",
        "--model.optim.weight_decay=0.05", "--data.shift=1", "--data.hflip=true", "--seed_everything=3",
        "--model.eval_hflip=true", "--model.network.label_smoothing=0.1", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (record,) = records(out)
    assert (record["seed"], record["shift"], record["hflip"], record["eval_hflip"]) == (3, 1, True, True)
    assert record["label_smoothing"] == 0.1
    assert all(len(record[k].split()) == 3 for k in ("load_avg_start", "load_avg_end"))  # 1/5/15-minute averages
    assert all(point["load_avg_1m"] >= 0 for point in record["curve"])
    assert record["dataset"] == "fashion_mnist" and record["global_steps"] == 2 and not record["complete"]
    assert (record["channels"], record["hidden"], record["pooling"]) == ([4, 8], [16], "avg")  # read from the net
    assert record["note"] == "a test run"
    assert (record["curvature_bound"], record["curvature_iters"], record["bptt_truncate"]) == (0.9, 3, None)
    assert record["method"] == "ep" and record["bptt_objective"] is None  # a BPTT setting, recorded for BPTT runs
    assert (record["optimizer"], record["weight_decay"]) == ("AdamW", 0.05)  # read from the optimizer that trained
    assert record["curve"] and "alignment_cos_all" in record["curve"][-1]
    # the training accuracy beside the validation accuracy: a fraction of the two 64-image batches, so k / 128
    assert 128 * record["curve"][-1]["train_acc"] == pytest.approx(round(128 * record["curve"][-1]["train_acc"]),
                                                                   abs=0.02)
    assert record["activations"] is None  # no ActivationDiagnostics callback in this run
    # two test batches (LightningCLI reads --trainer.limit_test_batches=1 as the float 1.0: every batch): an error
    # over their n images, 1 - correct / n
    n = 2 * record["batch_size"]
    correct = round((1.0 - record["test_error"]) * n)
    assert 0 <= correct <= n and record["test_error"] == pytest.approx(1.0 - correct / n, abs=1e-6)


def test_runs_beside_each_other_keep_every_record_of_a_shared_file(tmp_path):
    """``common.append_record`` from two processes at once, 200 records each, into one file: none is lost."""
    out = tmp_path / "shared.json"
    script = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); from pathlib import Path; "
              "from common import append_record\n"
              f"for i in range(200): append_record(Path({str(out)!r}), {{'writer': sys.argv[1], 'i': i}})")
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    kept = records(out)
    assert sorted((r["writer"], r["i"]) for r in kept) == [(w, i) for w in "ab" for i in range(200)]


@needs_fmnist
def test_training_records_an_snntorch_csnn_run(tmp_path):
    """``training.py fmnist-csnn`` trains snnTorch's CSNN baseline with a recipe config and records its network,
    neuron and augmentation settings (no EP settings, no EP-vs-BPTT cosine) and its training accuracy."""
    out = tmp_path / "training.json"
    proc = run_benchmark(
        "training.py", "fmnist-csnn", "--config", ROOT / "recipes" / "configs" / "fmnist_csnn_best.yaml",
        "--record", out, "--model.channels=[4, 8]", "--model.hidden=[16]", "--model.num_steps=3",
        "--data.train_subset=128", "--data.val_size=64", "--trainer.max_epochs=1", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'root'}", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (record,) = records(out)
    assert (record["method"], record["num_steps"], record["channels"], record["hidden"]) == ("csnn", 3, [4, 8], [16])
    assert (record["shift"], record["hflip"], record["optimizer"], record["weight_decay"]) == (2, True, "AdamW", 0.05)
    assert "t1" not in record and "curvature_bound" not in record
    (point,) = record["curve"]
    assert 0.0 <= point["train_acc"] <= 1.0 and "alignment_cos_all" not in point


@needs_fmnist
def test_training_on_the_whole_training_set_records_no_curve(tmp_path):
    """With ``--data.val_size 0`` (the whole official training set, no validation split) the paper config still
    trains, checkpoints and tests: no EP-vs-BPTT cosine is measured (it needs validation images), the record has an
    empty curve and every training sample counted, and ``last.ckpt`` is written though ``val/acc`` never is."""
    out, root = tmp_path / "training.json", tmp_path / "root"
    proc = run_benchmark(
        "training.py", "fmnist", "--config", ROOT / "recipes" / "configs" / "fmnist_paper.yaml", "--record", out,
        "--model.network.channels=[4, 8]", "--model.network.hidden=[16]", "--model.phases.t1=4",
        "--model.phases.t2=2", "--model.curvature.iters=3", "--data.train_subset=128", "--data.val_size=0",
        "--trainer.max_epochs=1",
        "--trainer.limit_test_batches=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (record,) = records(out)
    assert (record["train_samples"], record["global_steps"], record["epochs"]) == (128, 2, 1.0)
    assert record["curve"] == []
    (last,) = root.rglob("last.ckpt")
    # the test error recomputed from the weights that were tested (last.ckpt, written at the end of the fit) on the
    # two test batches (--trainer.limit_test_batches=2; 1 would be read as the float 1.0, all of them)
    from lightning_ep.data import load_split
    from lightning_ep.module import EPLightningModule

    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == record["global_steps"]
    model = EPLightningModule.load_from_checkpoint(last, map_location="cpu")
    xs, ys = load_split("fashion_mnist", train=False)
    x, y = xs[: 2 * record["batch_size"]], ys[: 2 * record["batch_size"]]
    with torch.no_grad():
        error = 1.0 - float((model(x).argmax(1) == y).double().mean())
    assert record["test_error"] == pytest.approx(error, abs=1e-6)


def test_training_record_of_a_resumed_run_continues_its_curve_and_clock(tmp_path):
    """A run cut after its first epoch and resumed from its checkpoint records both epochs' points, the wall time
    of both parts, the checkpoint it resumed from, each part's hardware, and the Figure 2/3 statistics of every step
    (the ActivationDiagnostics callback's, measured every step) of both parts."""
    out, root = tmp_path / "training.json", tmp_path / "root"
    tiny = ["--model.network.channels=[4, 8]", "--model.network.hidden=[16]", "--model.phases.t1=4",
            "--model.phases.t2=2",
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
    assert part1["hardware_parts"] == [part1["hardware"]]
    assert part2["hardware_parts"] == [part1["hardware"], part2["hardware"]]  # the first from the checkpoint
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
