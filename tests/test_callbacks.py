"""The callbacks log what they say: read back from CSV, W&B offline (in-process summary and the .wandb file),
TensorBoard event files and plain files without a logger; they check their arguments and their module; skipped
steps cost nothing; EP agrees with BPTT (cosine >= 0.99) on a non-spiking avg-pool net, also under 2-process DDP."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import settings
from helpers.csv_metrics import read_csv_metrics
from helpers.wandb_offline import read_records, run_file
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_ep import equilibrium_propagation
from lightning_ep.callbacks import (
    ActivationDiagnostics,
    GradientAlignment,
    MemoryMonitor,
    bptt_gradients,
    bptt_memory,
    cosine_and_norm_ratio,
    mean_and_std,
    route_statistics,
)
from lightning_ep.callbacks import activation_diagnostics as ad_mod
from lightning_ep.callbacks import gradient_alignment as ga_mod
from lightning_ep.callbacks import memory_monitor as mm_mod
from lightning_ep.memory import count_saved_bytes
from lightning_ep.module import EPLightningModule

NUM_CLASSES = 5
BATCH = 10
PARAMS = [f"blocks.{i}.{kind}.{p}" for i, kind in enumerate(("conv", "conv", "linear", "linear"))
          for p in ("weight", "bias")]
QUANTITIES = ("forward_sum", "backward_sum", "x_forward", "y_forward", "x_backward", "y_backward")
ACTIVATION_KEYS = [f"activations/conv{layer}/{q}_{s}" for layer in (1, 2) for q in QUANTITIES for s in ("mean", "std")]
ALIGNMENT_KEYS = ([f"alignment/cos/{p}" for p in PARAMS] + [f"alignment/norm_ratio/{p}" for p in PARAMS]
                  + ["alignment/cos_mean", "alignment/cos_all", "alignment/norm_ratio_all"])
MEMORY_KEYS = ["memory/ep_saved_bytes", "memory/bptt_saved_bytes", "memory/ep_over_bptt"]
# Converged settings (async updates settle exactly on this tiny avg-pool net): EP's gradient is BPTT's.
ALIGNED_ARGS = {"beta": 0.005, "t1": 100, "t2": 50}  # as equilibrium_propagation's arguments
ALIGNED = {"ep": {"beta": 0.005}, "phases": {"t1": 100, "t2": 50}}  # as the module's settings
BASE = {"network": {"input_shape": (1, 12, 12), "num_classes": NUM_CLASSES, "channels": (4, 6), "kernel_size": 3,
                    "hidden": (16,), "threshold": 0.0},
        "phases": {"t1": 30, "t2": 15}, "ep": {"beta": 0.05}, "curvature": None, "optim": {"scheduler": "none"}}


def make_module(**groups) -> EPLightningModule:
    torch.manual_seed(0)
    return EPLightningModule(**settings(BASE, **groups))


def dataset(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 12, 12, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def fit(module: pl.LightningModule, callbacks: list[pl.Callback], logger, max_steps: int = 3, **kwargs) -> pl.Trainer:
    x, y = dataset()
    trainer = pl.Trainer(max_steps=max_steps, logger=logger, callbacks=callbacks, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         **kwargs)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    return trainer


def all_callbacks(every: int = 2) -> list[pl.Callback]:
    return [GradientAlignment(every_n_steps=every), ActivationDiagnostics(every_n_steps=every),
            MemoryMonitor(every_n_steps=every, compare_bptt=True)]


# -- pure functions -------------------------------------------------------------------------------------------
def test_cosine_and_norm_ratio():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert cosine_and_norm_ratio(2 * a, a) == pytest.approx((1.0, 2.0))
    assert cosine_and_norm_ratio(-a, a) == pytest.approx((-1.0, 1.0))
    assert cosine_and_norm_ratio(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx((0.0, 1 / 3))
    cos, ratio = cosine_and_norm_ratio(torch.zeros(3), torch.ones(3))
    assert math.isnan(cos) and ratio == 0.0


def test_route_statistics_and_moments():
    module = make_module(network={"pooling": "max", "threshold": 0.05})
    x, y = dataset(6)
    res = equilibrium_propagation(module.net, x, y, 0.2, 10, 5)
    stats = route_statistics(module.net, x, res.phases["positive"].state)
    assert stats.shape == (2, len(QUANTITIES), 3) and stats.dtype == torch.float64
    mean, std = mean_and_std(stats)
    assert mean[0, 2] == pytest.approx(float(x.double().mean())) and std[0, 2] == pytest.approx(float(x.double().std()))
    r1 = res.phases["positive"].state.r[0]
    y_fwd, idx = module.net.blocks[0].forward_drive(x)
    sums = module.net.blocks[0].feedback(r1, idx).detach().flatten(1).sum(1).double()
    assert mean[0, 1] == pytest.approx(float(sums.mean())) and std[0, 1] == pytest.approx(float(sums.std()))
    assert mean[0, 0] == pytest.approx(float(y_fwd.detach().flatten(1).sum(1).double().mean()))
    assert mean[1, 2] == pytest.approx(float(r1.double().mean()))
    # counts, sums and sums of squares add up across "ranks"
    both = mean_and_std(route_statistics(module.net, x[:3], _slice(res, 0, 3))
                        + route_statistics(module.net, x[3:], _slice(res, 3, 6)))
    torch.testing.assert_close(both[0], mean)
    torch.testing.assert_close(both[1], std)


def _slice(res, a: int, b: int):
    state = res.phases["positive"].state
    return type(state)([s[a:b] for s in state.s], [r[a:b] for r in state.r])


# -- arguments and setup --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GradientAlignment, ActivationDiagnostics, MemoryMonitor])
@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_every_n_steps_is_checked(cls, every):
    with pytest.raises(ValueError, match="every_n_steps"):
        cls(every_n_steps=every)


@pytest.mark.parametrize("cls", [GradientAlignment, MemoryMonitor])
def test_bptt_t1_is_checked(cls):
    with pytest.raises(ValueError, match="bptt_t1"):
        cls(bptt_t1=0)


class _PlainModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(144, NUM_CLASSES)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("callback", [GradientAlignment(), ActivationDiagnostics(), MemoryMonitor()])
def test_wrong_module_fails_at_setup(callback):
    with pytest.raises(TypeError, match=rf"{type(callback).__name__} needs a lightning_ep.module.EPLightningModule.*"
                                        r"_PlainModule"):
        fit(_PlainModule(), [callback], logger=False, max_steps=1)


@pytest.mark.parametrize("callback", [GradientAlignment(), ActivationDiagnostics(), MemoryMonitor(compare_bptt=True)])
def test_bptt_trained_module_is_refused(callback):
    with pytest.raises(ValueError, match="method='bptt'"):
        fit(make_module(method="bptt"), [callback], logger=False, max_steps=1)


def test_dense_only_network_is_refused_by_activation_diagnostics():
    with pytest.raises(ValueError, match="conv layers, but the network has none"):
        fit(make_module(network={"channels": ()}), [ActivationDiagnostics()], logger=False, max_steps=1)


def test_memory_monitor_of_a_bptt_trained_module(tmp_path):
    monitor = MemoryMonitor()
    fit(make_module(method="bptt", phases={"t1": 10}), [monitor], logger=False, max_steps=1, default_root_dir=tmp_path)
    assert set(monitor.last) == {"memory/bptt_saved_bytes"} and monitor.last["memory/bptt_saved_bytes"] > 0


# -- what is logged, per logger -------------------------------------------------------------------------------
def test_csv_logger(tmp_path):
    module = make_module()
    logger = CSVLogger(tmp_path, name="csv", version=0)
    callbacks = all_callbacks(every=2)
    fit(module, callbacks, logger, log_every_n_steps=1)
    logged = read_csv_metrics(logger.log_dir)
    keys = ALIGNMENT_KEYS + ACTIVATION_KEYS + MEMORY_KEYS
    for step in (0, 2):  # measured steps, the step of Lightning's own train/loss_step of the same batch
        assert "train/loss_step" in logged[step]
        assert set(keys) <= set(logged[step]), set(keys) - set(logged[step])
    assert not set(keys) & set(logged[1])
    for step in (0, 2):
        m = logged[step]
        assert all(m[k] >= 0 for k in ACTIVATION_KEYS if k.endswith("_std"))
        assert m["memory/bptt_saved_bytes"] > 5 * m["memory/ep_saved_bytes"] > 0
        assert m["memory/ep_over_bptt"] == pytest.approx(m["memory/ep_saved_bytes"] / m["memory/bptt_saved_bytes"])
    x, y = (t[:BATCH].clone() for t in dataset())  # a batch of its own storage, like the DataLoader's
    assert logged[0]["activations/conv1/x_forward_mean"] == pytest.approx(float(x.mean()), rel=1e-5)
    # the monitored window holds the EP forward exactly (not the callbacks' BPTT), and the BPTT count is BPTT's
    phases = module.phases
    with count_saved_bytes() as ep_saved:
        equilibrium_propagation(module.net, x, y, module.ep.beta, phases.t1, phases.t2)
    assert logged[2]["memory/ep_saved_bytes"] == ep_saved.bytes
    assert logged[2]["memory/bptt_saved_bytes"] == bptt_memory(module.net, x, y, phases.t1, "async")[0]
    plots = Path(logger.log_dir) / "plots"
    assert {p.name for p in plots.iterdir()} == {"alignment_plot.png", "alignment_table.csv",
                                                 "activations_plot.png", "memory_plot.png"}
    with (plots / "alignment_table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["parameter"] for r in table] == PARAMS and {r["step"] for r in table} == {"2"}
    # step 0 (the initial weights, the first batch): each logged cosine and ratio from the two gradients here
    fresh = make_module()
    params = list(fresh.net.parameters())
    ep = torch.autograd.grad(fresh.run_ep(x, y).surrogate, params)
    bptt = bptt_gradients(fresh.net, x, y, params, phases.t1, phases.update, phases.start, phases.omega)
    for p, a, b in zip(PARAMS, ep, bptt, strict=True):
        a, b = a.double().flatten(), b.double().flatten()
        assert logged[0][f"alignment/cos/{p}"] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-6), p
        assert logged[0][f"alignment/norm_ratio/{p}"] == pytest.approx(float(a.norm() / b.norm()), rel=1e-5), p
    # step 2: the per-tensor figures against the table's gradient norms, and the summaries recomputed from them
    cos, ep_norm, bptt_norm = (torch.tensor([float(r[c]) for r in table], dtype=torch.float64)
                               for c in ("cosine", "ep_norm", "bptt_norm"))
    for r in table:
        assert float(r["cosine"]) == pytest.approx(logged[2][f"alignment/cos/{r['parameter']}"])
        assert float(r["norm_ratio"]) == pytest.approx(logged[2][f"alignment/norm_ratio/{r['parameter']}"])
        assert float(r["norm_ratio"]) == pytest.approx(float(r["ep_norm"]) / float(r["bptt_norm"]))
    dot = float((cos * ep_norm * bptt_norm).sum())  # <g_EP, g_BPTT> over all parameters, tensor by tensor
    assert logged[2]["alignment/cos_all"] == pytest.approx(dot / float(ep_norm.norm() * bptt_norm.norm()), abs=1e-6)
    assert logged[2]["alignment/norm_ratio_all"] == pytest.approx(float(ep_norm.norm() / bptt_norm.norm()))
    assert logged[2]["alignment/cos_mean"] == pytest.approx(float(cos.mean()))
    assert callbacks[0].steps == [0, 2] and len(callbacks[0].history[PARAMS[0]]) == 2


def test_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="test-callbacks")
    try:
        fit(make_module(), all_callbacks(every=2), logger)
        summary = logger.experiment.summary
        for key in ALIGNMENT_KEYS + ACTIVATION_KEYS + MEMORY_KEYS:
            assert isinstance(summary[key], int | float), key
        for key in ("alignment/plot", "activations/plot", "memory/plot"):
            assert dict(summary[key])["_type"] == "images/separated", key
        assert dict(summary["alignment/table"])["_type"] == "table-file"
        assert dict(summary["alignment/table"])["nrows"] == len(PARAMS)
        final_cos = summary["alignment/cos_all"]
        run_dir = Path(logger.experiment.dir).parent
    finally:
        logger.experiment.finish()
        wandb.teardown()  # wandb keeps its settings (WANDB_DIR) in-process: forget them for later tests
    history: dict[int, dict[str, object]] = {}
    for row in read_records(run_file(tmp_path))["history"]:
        if "trainer/global_step" in row:
            history.setdefault(row.pop("trainer/global_step"), {}).update(row)
    for step in (0, 2):
        assert set(ALIGNMENT_KEYS + ACTIVATION_KEYS + MEMORY_KEYS) <= set(history[step])
        for key in ("alignment/plot", "activations/plot"):
            (name,) = history[step][f"{key}/filenames"]
            assert (run_dir / "files" / name).stat().st_size > 10_000
        assert history[step]["alignment/table/_type"] == "table-file"
    assert history[2]["memory/plot/_type"] == "images/separated"
    assert not any(k.startswith(("alignment", "activations", "memory")) for k in history.get(1, {}))
    assert history[2]["alignment/cos_all"] == pytest.approx(final_cos)


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    fit(make_module(), all_callbacks(every=2), logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(ALIGNMENT_KEYS + ACTIVATION_KEYS + MEMORY_KEYS) <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("alignment/cos_all")] == [0, 2]
    assert {"alignment/plot", "activations/plot", "memory/plot"} <= set(tags["images"])
    assert [e.step for e in events.Images("activations/plot")] == [0, 2]
    assert any(t.startswith("alignment/table") for t in tags["tensors"])


def test_no_logger_writes_plot_files(tmp_path):
    callbacks = all_callbacks(every=2)
    fit(make_module(), callbacks, logger=False, default_root_dir=tmp_path)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"alignment_plot.png", "alignment_table.csv",
                                                                  "activations_plot.png", "memory_plot.png"}
    alignment, activations, memory = callbacks
    assert alignment.steps == [0, 2] and activations.last is not None and activations.last[0].shape == (2, 6)
    assert [h[0] for h in activations.history] == [0, 2] and activations.history[-1][1] is activations.last[0]
    assert set(memory.last) == set(MEMORY_KEYS)


def test_plots_can_be_switched_off(tmp_path):
    callbacks = [GradientAlignment(2, plot=False), ActivationDiagnostics(2, plot=False), MemoryMonitor(plot=False)]
    fit(make_module(), callbacks, logger=False, default_root_dir=tmp_path)
    assert not (tmp_path / "plots").exists() and callbacks[0].steps == [0, 2]


def test_skipped_steps_cost_nothing(tmp_path, monkeypatch):
    calls = {"bptt": 0, "routes": 0, "saved": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ga_mod, "bptt_gradients", counting("bptt", ga_mod.bptt_gradients))
    monkeypatch.setattr(ad_mod, "route_statistics", counting("routes", ad_mod.route_statistics))
    monkeypatch.setattr(mm_mod, "count_saved_bytes", counting("saved", mm_mod.count_saved_bytes))
    callbacks = [GradientAlignment(3, plot=False), ActivationDiagnostics(3, plot=False), MemoryMonitor(3, plot=False)]
    fit(make_module(), callbacks, logger=False, max_steps=4, default_root_dir=tmp_path)
    assert calls == {"bptt": 2, "routes": 2, "saved": 2}  # steps 0 and 3 only


def test_memory_monitor_default_cadence_is_sparse(tmp_path, monkeypatch):
    """By default the BPTT comparison (about one more training step of compute) runs at step 0, then every 500
    steps: not on every step."""
    runs: list[int] = []
    measure = mm_mod.bptt_memory

    def counting(*args, **kwargs):
        runs.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(mm_mod, "bptt_memory", counting)
    monitor = MemoryMonitor(compare_bptt=True, plot=False)
    assert monitor.every_n_steps == 500
    fit(make_module(), [monitor], logger=False, max_steps=4, default_root_dir=tmp_path)
    assert len(runs) == 1 and set(monitor.last) == set(MEMORY_KEYS)


def test_memory_monitor_cuda_bookkeeping(tmp_path, monkeypatch):
    """No GPU here: fake the CUDA counters to check which window each peak covers and what is logged."""
    events: list[str] = []
    allocated = iter(range(1000, 100_000, 1000))

    def reset(device):
        events.append("reset")
        return next(allocated)

    def peak(device):
        events.append("peak")
        return next(allocated) + 10_000

    monkeypatch.setattr(mm_mod, "_is_cuda", lambda device: True)
    monkeypatch.setattr(mm_mod, "reset_cuda_peak", reset)
    monkeypatch.setattr(mm_mod, "cuda_peak_bytes", peak)
    monitor = MemoryMonitor(every_n_steps=2, compare_bptt=True)
    fit(make_module(), [monitor], logger=False, max_steps=3, default_root_dir=tmp_path)
    assert events == ["reset", "peak", "reset", "peak"] * 2  # EP step (to the optimizer step), then BPTT
    assert set(monitor.last) == {*MEMORY_KEYS, "memory/ep_peak_bytes", "memory/bptt_peak_bytes",
                                 "memory/ep_over_bptt_peak"}
    assert monitor.last["memory/ep_peak_bytes"] == monitor.last["memory/bptt_peak_bytes"] == 11_000
    assert monitor.last["memory/ep_over_bptt_peak"] == 1.0


# -- EP against BPTT --------------------------------------------------------------------------------------------
def test_alignment_cosine_single_process(tmp_path):
    alignment = GradientAlignment(every_n_steps=2, plot=False)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    fit(make_module(**ALIGNED), [alignment], logger, precision="64-true")
    logged = read_csv_metrics(logger.log_dir)
    for i, step in enumerate((0, 2)):
        for p in PARAMS:
            cos, ratio = alignment.history[p][i]
            assert cos >= 0.99 and 0.95 <= ratio <= 1.05, (step, p, cos, ratio)
            assert logged[step][f"alignment/cos/{p}"] == pytest.approx(cos)
        assert logged[step]["alignment/cos_all"] >= 0.999


def test_alignment_cosine_ddp(tmp_path):
    """2-process DDP (gloo): the logged cosine is between the averaged EP and the averaged BPTT gradients, i.e.
    those of the global batch, not the rank-local BPTT gradient (which is measurably different)."""
    x, y = dataset()
    callbacks = [GradientAlignment(every_n_steps=2, plot=False), ActivationDiagnostics(every_n_steps=2, plot=False),
                 MemoryMonitor(every_n_steps=2, plot=False)]
    trainer = pl.Trainer(max_steps=3, strategy="ddp_spawn", devices=2, accelerator="cpu", precision="64-true",
                         logger=CSVLogger(tmp_path, name="csv", version=0), callbacks=callbacks,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(make_module(**ALIGNED), DataLoader(TensorDataset(x, y), batch_size=BATCH))
    logged = read_csv_metrics(tmp_path / "csv" / "version_0")
    for step in (0, 2):
        assert all(logged[step][f"alignment/cos/{p}"] >= 0.99 for p in PARAMS), logged[step]
        assert 0.95 <= logged[step]["alignment/norm_ratio_all"] <= 1.05
    # the same comparison here, on the global first batch: Lightning gives each rank a shuffling
    # DistributedSampler (seed PL_GLOBAL_SEED or 0); rank 0's own BPTT gradient would have given other values
    data, seed = TensorDataset(*dataset()), int(os.environ.get("PL_GLOBAL_SEED", 0))
    shards = [list(DistributedSampler(data, 2, r, shuffle=True, seed=seed))[:BATCH] for r in (0, 1)]
    x, y = data[shards[0] + shards[1]]
    module = make_module(**ALIGNED).double()
    x = x.double()
    params = list(module.net.parameters())
    ep = torch.autograd.grad(equilibrium_propagation(module.net, x, y, **ALIGNED_ARGS).surrogate, params)
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (
        ep, bptt_gradients(module.net, x, y, params, ALIGNED_ARGS["t1"], "async"),
        bptt_gradients(module.net, x[:BATCH], y[:BATCH], params, ALIGNED_ARGS["t1"], "async"))]
    cos_global, ratio_global = cosine_and_norm_ratio(flat[0], flat[1])
    cos_local, ratio_local = cosine_and_norm_ratio(flat[0], flat[2])
    assert logged[0]["alignment/cos_all"] == pytest.approx(cos_global, abs=1e-7)
    assert logged[0]["alignment/norm_ratio_all"] == pytest.approx(ratio_global, rel=1e-6)
    assert abs(ratio_local - ratio_global) > 0.05 and abs(cos_local - cos_global) > 1e-4
    # activation statistics are summed over the ranks: the first conv's input is the global batch
    assert logged[0]["activations/conv1/x_forward_mean"] == pytest.approx(float(x.mean()), rel=1e-9)
    assert logged[0]["activations/conv1/x_forward_std"] == pytest.approx(float(x.std()), rel=1e-9)


def test_alignment_on_a_held_out_batch(tmp_path):
    """``held_out=n``: both gradients on the first n validation samples, the same batch at every measurement,
    without touching the training step's gradient (training goes exactly as without the callback)."""
    x, y = dataset()
    vx, vy = dataset(12)[0] * 0.5, dataset(12)[1].flip(0)  # validation data that is not the training data
    alignment = GradientAlignment(every_n_steps=2, plot=False, held_out=8)
    trained = make_module(**ALIGNED)
    plain = make_module(**ALIGNED)
    for module, callbacks in ((trained, [alignment]), (plain, [])):
        trainer = pl.Trainer(max_steps=3, logger=False, callbacks=callbacks, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                             precision="64-true", limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH),
                    DataLoader(TensorDataset(vx, vy), batch_size=5))
    for a, b in zip(trained.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert alignment.steps == [0, 2]
    # step 0 is measured before the first update: the initial weights, on validation samples 0..7
    module = make_module(**ALIGNED).double()
    params = list(module.net.parameters())
    hx, hy = vx[:8].double(), vy[:8]
    ep = torch.autograd.grad(equilibrium_propagation(module.net, hx, hy, **ALIGNED_ARGS).surrogate, params)
    bptt = bptt_gradients(module.net, hx, hy, params, ALIGNED_ARGS["t1"], "async")
    cos, _ = cosine_and_norm_ratio(torch.cat([g.flatten() for g in ep]), torch.cat([g.flatten() for g in bptt]))
    assert alignment.all_cosines[0] == pytest.approx(cos, abs=1e-9)
    assert cos >= 0.99


def test_alignment_leaves_the_dither_stream_alone(tmp_path):
    """A dithered module measured on a held-out batch draws the callback's own noise: its training (which draws from
    the module's dither generator every step) ends exactly as without the callback."""
    x, y = dataset()
    vx, vy = dataset(12)
    alignment = GradientAlignment(every_n_steps=1, plot=False, held_out=8)
    dithered = {"phases": ALIGNED["phases"], "network": {"threshold": 0.05},
                "ep": {**ALIGNED["ep"], "dither": True, "average_last": 10}}
    modules = [make_module(**dithered), make_module(**dithered)]
    for module, callbacks in zip(modules, ([alignment], []), strict=True):
        trainer = pl.Trainer(max_steps=3, logger=False, callbacks=callbacks, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                             limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH),
                    DataLoader(TensorDataset(vx, vy), batch_size=5))
    assert alignment.steps == [0, 1, 2]
    for a, b in zip(modules[0].parameters(), modules[1].parameters(), strict=True):
        assert torch.equal(a, b)
    state = modules[0].dither_generator.get_state()
    seeded = torch.Generator(modules[0].dither_generator.device).manual_seed(modules[0].seed).get_state()
    assert not torch.equal(state, seeded), "training drew no dither noise: the stream is still at its seed"
    assert torch.equal(state, modules[1].dither_generator.get_state())


def test_alignment_held_out_needs_enough_validation_data(tmp_path):
    x, y = dataset()
    trainer = pl.Trainer(max_steps=1, logger=False, callbacks=[GradientAlignment(held_out=50)],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    with pytest.raises(ValueError, match="needs 50 validation samples"):
        trainer.fit(make_module(), loader, loader)
    with pytest.raises(ValueError, match="held_out"):
        GradientAlignment(held_out=0)


def test_alignment_against_the_network_without_spikes(tmp_path):
    """``bptt_spiking=False``: the BPTT reference is the same network at threshold 0; the module keeps its own."""
    x, y = dataset()
    alignment = GradientAlignment(every_n_steps=5, plot=False, held_out=8, bptt_spiking=False)
    module = make_module(**ALIGNED, network={"threshold": 0.01})
    trainer = pl.Trainer(max_steps=1, logger=False, callbacks=[alignment], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                         precision="64-true", limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH), DataLoader(TensorDataset(x, y)))
    assert module.net.threshold == 0.01
    fresh = make_module(**ALIGNED, network={"threshold": 0.01}).double()
    params = list(fresh.net.parameters())
    hx, hy = x[:8].double(), y[:8]
    ep = torch.autograd.grad(equilibrium_propagation(fresh.net, hx, hy, **ALIGNED_ARGS).surrogate, params)
    fresh.net.threshold = 0.0
    bptt = bptt_gradients(fresh.net, hx, hy, params, ALIGNED_ARGS["t1"], "async")
    cos, _ = cosine_and_norm_ratio(torch.cat([g.flatten() for g in ep]), torch.cat([g.flatten() for g in bptt]))
    assert alignment.all_cosines[0] == pytest.approx(cos, abs=1e-9)


@pytest.mark.parametrize("logger", [False, True], ids=["no_logger", "default_logger"])
def test_fast_dev_run_writes_no_files(tmp_path, monkeypatch, logger):
    """Under ``fast_dev_run`` Lightning suppresses logging (its loggers become a ``DummyLogger``, or none) and
    checkpointing: the callbacks still measure, but write no plot or table anywhere (not into the working
    directory, which is Lightning's default root, nor under ``default_root_dir``)."""
    monkeypatch.chdir(tmp_path)
    callbacks = all_callbacks(every=1)
    trainer = fit(make_module(), callbacks, logger=logger, fast_dev_run=2)
    assert trainer.global_step == 2 and callbacks[0].steps == [0, 1] and callbacks[2].last
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
    root = tmp_path / "root"
    fit(make_module(), all_callbacks(every=1), logger=logger, fast_dev_run=True, default_root_dir=root)
    assert not root.exists() and not list(tmp_path.iterdir())
