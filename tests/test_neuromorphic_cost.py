"""Neuromorphic cost: spikes, SynOps, dense MACs and latency against hand-computed tiny networks; fan-outs are what a
spike actually reaches in the engine; the trace changes nothing; the callback logs the counts to a CSV logger; the
ActivationDiagnostics callback logs the spike raster (snnTorch's spikeplot or its matplotlib stand-in); the
benchmark runs in its smallest mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import PatternDataModule, settings, tiny_csnn
from helpers.csv_metrics import read_csv_metrics
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_ep import Conv, ConvergentNetwork, Dense, equilibrium_propagation, free_phase
from lightning_ep.callbacks import ActivationDiagnostics, NeuromorphicCostMonitor, spike_raster_figure
from lightning_ep.callbacks import neuromorphic_cost as nc_callback
from lightning_ep.dynamics import NetworkState, input_drive, relax
from lightning_ep.module import EPLightningModule
from lightning_ep.neuromorphic import (
    StepTrace,
    accuracy_at_steps,
    dense_macs_per_step,
    fan_out,
    feedback_fan_out,
    forward_fan_out,
    input_macs,
    latency_steps,
    phase_cost,
    sweep_macs,
    trace_cost,
    traced_free_phase,
    traced_nudged_phase,
    training_step_cost,
)

ROOT = Path(__file__).resolve().parents[1]


# -- hand-computed networks ------------------------------------------------------------------------------------------


def conv_dense_net(output_bias: tuple[float, float] = (0.3, 0.0)) -> ConvergentNetwork:
    """One conv (1 -> 1 channel, 3x3, avg pool 2: a 6x6 image -> 4 neurons), one dense (4 -> 2 classes), threshold
    0.1. All weights 0: layer 1 settles at its bias 0.5 (5 spikes a neuron), the output at its bias."""
    net = ConvergentNetwork((1, 6, 6), [Conv(1, 3, pooling="avg")], num_classes=2, threshold=0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.blocks[0].conv.bias.fill_(0.5)
        net.blocks[1].linear.bias.copy_(torch.tensor(output_bias))
    return net


def test_counts_of_one_conv_one_dense_by_hand():
    net = conv_dense_net()
    # fan-outs: layer 1 -> the 2 outputs (no feedback into the clamped input); output -> the 4 layer-1 neurons
    assert [m.tolist() for m in fan_out(net)] == [[[[2.0, 2.0], [2.0, 2.0]]], [4.0, 4.0]]
    assert dense_macs_per_step(net) == [8.0, 8.0] and sweep_macs(net) == [8.0, 0.0]
    assert input_macs(net) == 2 * 2 * 16  # the folded 4x4 stride-2 kernel, 2x2 outputs, once an inference
    x = torch.rand(3, 1, 6, 6)
    free = free_phase(net, x, 5)
    cost = phase_cost(net, free)
    # 3 samples: layer 1 sends 4 x 5 spikes, the output 3 (0.3 / 0.1) and 0; then both are settled
    assert cost.spikes == [60.0, 9.0]
    assert cost.synops == [120.0, 36.0] and cost.synops_exact
    assert cost.dense_macs == [3 * 5 * 8.0, 3 * 5 * 8.0] and cost.input_macs == 3 * 64.0
    assert cost.synops_per_dense_mac == pytest.approx(156 / 240)
    metrics = cost.metrics("c")
    assert metrics["c/spikes"] == 23.0 and metrics["c/synops"] == 52.0 and metrics["c/dense_macs"] == 80.0
    assert metrics["c/spikes_layer1"] == 20.0 and metrics["c/synops_layer2"] == 12.0 and metrics["c/input_macs"] == 64
    traced = trace_cost(net, traced_free_phase(net, x, 5)[1])
    assert traced.spikes == cost.spikes and traced.synops == cost.synops and traced.dense_macs == cost.dense_macs
    assert traced.events == [12.0, 3.0] and traced.event_synops == [24.0, 12.0]  # one graded message a neuron
    assert traced.latency.tolist() == [1, 1, 1]


def test_feedforward_start_counts_the_sweep():
    net = conv_dense_net()
    x = torch.rand(3, 1, 6, 6)
    free = free_phase(net, x, 5, start="feedforward")
    cost = phase_cost(net, free, feedforward_start=True)
    assert cost.spikes == [60.0, 9.0]  # the sweep sends everything; the steps send nothing more
    assert cost.dense_macs == [3 * (5 * 8.0 + 8.0), 3 * 5 * 8.0]  # plus the sweep's forward drive of the output
    _, trace = traced_free_phase(net, x, 5, start="feedforward")
    assert trace.swept and trace.spikes_per_step().sum() == 0
    traced = trace_cost(net, trace)
    assert traced.spikes == cost.spikes and traced.synops == cost.synops and traced.dense_macs == cost.dense_macs


def test_training_step_counts_all_three_phases_by_hand():
    net = conv_dense_net()
    x, y = torch.rand(3, 1, 6, 6), torch.ones(3, dtype=torch.long)
    result = equilibrium_propagation(net, x, y, beta=0.25, t1=5, t2=4)
    cost = training_step_cost(net, result)
    # +beta: the output moves to (0.3, 0.25) / 1.25 = (0.24, 0.2): q = (-1, +2); -beta: to (0.4, 0): q = (+1, 0)
    assert [float(s) for s in result.phases["positive"].spikes] == [0.0, 9.0]
    assert [float(s) for s in result.phases["negative"].spikes] == [0.0, 3.0]
    assert cost.spikes == [60.0, 21.0] and cost.synops == [120.0, 84.0]
    assert cost.steps == 13 and cost.dense_macs == [3 * 13 * 8.0, 3 * 13 * 8.0]
    assert cost.input_macs == 3 * 64.0  # one input drive for the three phases


def test_settled_silent_layer_sends_nothing():
    net = conv_dense_net(output_bias=(-1.0, -1.0))  # the output is clamped at 0 from the first step
    free = free_phase(net, torch.rand(2, 1, 6, 6), 6)
    cost = phase_cost(net, free)
    assert cost.spikes[1] == 0.0 and cost.synops[1] == 0.0
    assert cost.dense_macs[1] == 2 * 6 * 8.0  # the dense network still computes every synapse every step
    _, trace = traced_free_phase(net, torch.rand(2, 1, 6, 6), 6)
    assert trace_cost(net, trace).synops[1] == 0.0 and trace.spikes_per_step()[:, :, 1].abs().sum() == 0


def conv_conv_net() -> ConvergentNetwork:
    """8x8 image -> conv 1ch 3x3 no pooling (6x6) -> conv 2ch 3x3 avg pool 2 (2x2x2) -> 3 outputs, threshold 0.1.
    The first conv copies the image's centre (centre tap 1), everything else is 0: layer 1 = x[1:7, 1:7]."""
    net = ConvergentNetwork((1, 8, 8), [Conv(1, 3, pooling="none"), Conv(2, 3, pooling="avg")], num_classes=3,
                            threshold=0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.blocks[0].conv.weight[0, 0, 1, 1] = 1.0
    return net


def test_conv_fan_out_by_hand():
    net = conv_conv_net()
    # layer 1 -> the folded 4x4 stride-2 conv of block 2 (2 channels): rows/cols 0,1 in one window, 2,3 in two
    per_axis = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    layer1, layer2, layer3 = fan_out(net)
    torch.testing.assert_close(layer1[0], 2 * torch.outer(per_axis, per_axis))
    assert layer2.unique().tolist() == [16.0 + 3.0]  # feedback through a whole 4x4 window, forward to 3 outputs
    assert layer3.tolist() == [8.0, 8.0, 8.0]
    assert dense_macs_per_step(net) == [128.0, 152.0, 24.0]
    assert input_macs(net) == 6 * 6 * 9
    # max pooling: block 2 runs the plain 3x3 conv (4x4 positions) before pooling; a pooled neuron's feedback goes
    # through the winning position's 9 taps
    net_max = ConvergentNetwork((1, 8, 8), [Conv(1, 3, pooling="none"), Conv(2, 3, pooling="max")], num_classes=3)
    per_axis = torch.tensor([1.0, 2.0, 3.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(fan_out(net_max)[0][0], 2 * torch.outer(per_axis, per_axis))
    assert fan_out(net_max)[1].unique().tolist() == [9.0 + 3.0]
    assert dense_macs_per_step(net_max) == [2 * 16 * 9.0, 24.0 + 2 * 16 * 9.0, 24.0]


def test_exact_synops_weigh_each_neuron_by_its_own_fan_out():
    net = conv_conv_net()
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 1], x[0, 0, 3, 3] = 0.5, 0.3  # layer 1: 5 spikes at its corner (fan-out 2), 3 inside (fan-out 8)
    _, trace = traced_free_phase(net, x, 3)
    exact = trace_cost(net, trace)
    assert exact.spikes == [8.0, 0.0, 0.0] and exact.synops == [5 * 2 + 3 * 8.0, 0.0, 0.0]
    assert exact.synops_exact and exact.dense_macs == [3 * 128.0, 3 * 152.0, 3 * 24.0]
    estimate = phase_cost(net, free_phase(net, x, 3))
    assert estimate.spikes == exact.spikes and not estimate.synops_exact
    assert estimate.synops[0] == pytest.approx(8 * 128 / 36)  # the layer's mean fan-out


@pytest.mark.parametrize("pooling", ["avg", "none"])
def test_fan_out_is_what_one_spike_reaches_in_the_engine(pooling):
    torch.manual_seed(0)
    block = ConvergentNetwork((2, 9, 9), [Conv(3, 3, padding=1, pooling=pooling)], num_classes=2).blocks[0]
    fwd, fb = forward_fan_out(block), feedback_fan_out(block)
    with torch.no_grad():
        for index in [(0, 0, 0), (1, 4, 4), (0, 8, 3)]:
            unit = torch.zeros(1, *block.in_shape)
            unit[(0, *index)] = 1.0
            changed = (block.forward_drive(unit)[0] - block.forward_drive(torch.zeros_like(unit))[0]) != 0
            assert changed.sum().item() == fwd[index].item()
        for index in [(0, 0, 0), (2, 1, 2)]:
            unit = torch.zeros(1, *block.out_shape)
            unit[(0, *index)] = 1.0
            assert (block.feedback(unit, None) != 0).sum().item() == fb[index].item()


# -- latency and the trace ---------------------------------------------------------------------------------------


def test_latency_of_constructed_predictions():
    predictions = torch.tensor([[0, 1, 0, 2], [0, 2, 1, 2], [0, 2, 0, 2], [0, 1, 1, 2], [0, 1, 0, 2],
                                [0, 1, 0, 1]])
    assert latency_steps(predictions).tolist() == [1, 4, 5, 6]
    with pytest.raises(ValueError, match="steps >= 1"):
        latency_steps(torch.zeros(0, 3, dtype=torch.long))


def chain_net(threshold: float = 0.0) -> ConvergentNetwork:
    """1 input -> 1 -> 1 -> 2 outputs (float64). Output bias favours class 0 (0.1); the input's signal reaches
    output 1 through the chain, 0.5 at synchronous step 3: the prediction flips from 0 to 1 there."""
    net = ConvergentNetwork((1,), [Dense(1), Dense(1)], num_classes=2, threshold=threshold).double()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.blocks[0].linear.weight.fill_(0.5)
        net.blocks[1].linear.weight.fill_(1.0)
        net.blocks[2].linear.weight.copy_(torch.tensor([[0.0], [1.0]]))
        net.blocks[2].linear.bias.copy_(torch.tensor([0.1, 0.0]))
    return net


@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_latency_on_a_constructed_network(threshold):
    net = chain_net(threshold)
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    _, trace = traced_free_phase(net, x, 6, update="sync")
    assert trace.predictions_per_step()[:, 0].tolist() == [0, 0, 1, 1, 1, 1]
    cost = trace_cost(net, trace)
    assert cost.latency.tolist() == [3, 1]
    assert trace_cost(net, trace, steps=2).latency.tolist() == [1, 1]  # cut before the flip: never changed
    assert accuracy_at_steps(trace, torch.tensor([1, 1]), [2, 3, 10]) == {2: 0.0, 3: 0.5, 10: 0.5}
    with pytest.raises(ValueError, match="integers >= 1"):  # step 0 would read the last step's answer
        accuracy_at_steps(trace, torch.tensor([1, 1]), [0, 3])
    if threshold:
        # sample 1 by hand: layer 1 at 0.5 (step 1) then 1 (step 3), layer 2 at 0.5 (step 2) then 1 (step 4),
        # the output at 0.1 (step 1), (0.1, 0.5) (step 3), (0.1, 1) (step 5); sample 2: the output's bias only
        assert trace.spikes_per_step()[:, 0, 2].tolist() == [2.0, 0.0, 10.0, 0.0, 10.0, 0.0]
        assert cost.spikes == [20.0, 20.0, 24.0]
        assert cost.synops == [20.0 * 1, 20.0 * (2 + 1), 24.0 * 1]  # fan-outs: 1; 2 forward + 1 back; 1 back
        assert cost.events == [2.0, 2.0, 4.0]
    assert cost.dense_macs == [2 * 6 * 1.0, 2 * 6 * 3.0, 2 * 6 * 2.0]


def test_trace_changes_nothing():
    torch.manual_seed(0)
    net = ConvergentNetwork((1, 10, 10), [Conv(3, 3, pooling="max"), Dense(12)], num_classes=4, threshold=0.02)
    x = torch.rand(5, 1, 10, 10)
    with torch.no_grad():
        drive = input_drive(net, x)
        plain = relax(net, drive, NetworkState.zeros(net, 5), 7)
        trace = StepTrace(raster_samples=2)
        traced = relax(net, drive, NetworkState.zeros(net, 5), 7, trace=trace)
    for a, b in zip(plain.state.s + plain.spikes, traced.state.s + traced.spikes, strict=True):
        assert torch.equal(a, b)
    assert trace.steps == 7 and trace.spikes_per_step().shape == (7, 5, 3)
    torch.testing.assert_close(trace.spikes_per_step().sum((0, 1)), torch.stack(plain.spikes).double())
    assert [r.shape for r in trace.raster_of(1)] == [(7, 3 * 4 * 4), (7, 12), (7, 4)]
    ff = free_phase(net, x, 4, start="feedforward")
    traced_ff, trace_ff = traced_free_phase(net, x, 4, start="feedforward", raster_samples=1)
    assert all(torch.equal(a, b) for a, b in zip(ff.state.s, traced_ff.state.s, strict=True))
    assert [float(s) for s in ff.spikes] == [float(s) for s in traced_ff.spikes]
    assert trace_cost(net, trace_ff).spikes == [float(s) for s in ff.spikes]  # the sweep is the trace's start
    with pytest.raises(ValueError, match="not recorded"):
        trace_ff.raster_of(1)


# -- the callbacks ---------------------------------------------------------------------------------------------------


def spiking_module(**kwargs) -> EPLightningModule:
    torch.manual_seed(0)
    groups = settings(network={"input_shape": (3, 10, 10), "num_classes": 4, "threshold": 0.05},
                      phases={"start": "feedforward"}, optim={"scheduler": "none"})
    return EPLightningModule(**settings(groups, **kwargs))


def trainer(tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
                      num_sanity_val_steps=0, logger=CSVLogger(tmp_path, name="csv"), callbacks=callbacks,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)


def test_callback_logs_the_counts_to_csv(tmp_path):
    module, data = spiking_module(), PatternDataModule()
    monitor = NeuromorphicCostMonitor(every_n_steps=1, traced_samples=16)
    fit = trainer(tmp_path, [monitor])
    fit.fit(module, data)
    fit.test(module, data)
    # the TINY net: conv 3->4 (avg pool: 4x4x4 = 64 neurons) -> dense 16 -> 4 outputs; all fan-outs uniform
    fan = [16.0, 4.0 + 64.0, 16.0]
    per_step = 64 * 16 + (16 * 4 + 16 * 64) + 4 * 16
    train = monitor.last["train"]
    assert train["train/cost/dense_macs"] == (20 + 2 * 8) * per_step + 64 * 16 + 16 * 4  # t1 + 2 t2 steps + sweep
    assert train["train/cost/input_macs"] == 4 * 4 * 4 * 3 * 16
    assert train["train/cost/synops"] == pytest.approx(
        sum(f * train[f"train/cost/spikes_layer{i}"] for i, f in enumerate(fan, 1)))
    assert train["train/cost/synops"] == pytest.approx(sum(train[f"train/cost/synops_{p}"]
                                                           for p in ("free", "positive", "negative")))
    assert 1 <= train["train/cost/latency"] <= 20
    # test: the free phase of the first 64 samples, re-computed here
    x, _ = next(iter(data.test_dataloader()))
    free = module._free(x)
    test = monitor.last["test"]
    assert test["test/cost/spikes"] == pytest.approx(sum(float(s) for s in free.spikes) / 64)
    assert test["test/cost/dense_macs"] == 20 * per_step + 64 * 16 + 16 * 4
    assert test["test/cost/synops_exact"] == pytest.approx(
        trace_cost(module.net, traced_free_phase(module.net, x[:16], 20, start="feedforward")[1]).total_synops / 16)
    assert 0 < test["test/cost/event_synops"] <= test["test/cost/synops_exact"]  # an event carries >= 1 spike
    logged = read_csv_metrics(fit.logger.log_dir)
    keys = set().union(*logged.values())
    for stage in ("train", "val", "test"):
        traced = "_free" if stage == "train" else ""  # training re-runs the free phase only
        for name in ("spikes", "synops", "dense_macs", "synops_per_dense_mac", "spikes_layer3", "latency",
                     f"event_synops{traced}", f"synops_exact{traced}"):
            assert f"{stage}/cost/{name}" in keys
    assert logged[0]["train/cost/dense_macs"] == train["train/cost/dense_macs"]


@pytest.mark.parametrize("monitor", ["val/cost/synops", "train/cost/spikes"])
def test_a_checkpoint_and_early_stopping_can_monitor_a_cost(tmp_path, monitor):
    """The counts reach ``trainer.callback_metrics``, where ModelCheckpoint and EarlyStopping look for their key."""
    module, data = spiking_module(), PatternDataModule()
    cost = NeuromorphicCostMonitor(every_n_steps=1, traced_samples=8)
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor=monitor, mode="min", save_top_k=1)
    fit = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                     callbacks=[cost, best, EarlyStopping(monitor=monitor, patience=5)], enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1)
    fit.fit(module, data)
    latest = cost.last[monitor.split("/")[0]][monitor]
    assert float(fit.callback_metrics[monitor]) == pytest.approx(latest, rel=1e-6) and latest > 0
    assert Path(best.best_model_path).is_file() and 0 < float(best.best_model_score) <= latest * (1 + 1e-6)


def test_callback_checks_its_arguments_and_module(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        NeuromorphicCostMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="traced_samples"):
        NeuromorphicCostMonitor(traced_samples=-1)
    with pytest.raises(TypeError, match="EPLightningModule"):
        NeuromorphicCostMonitor().setup(pl.Trainer(logger=False), pl.LightningModule(), "fit")


def test_activation_diagnostics_logs_the_spike_raster(tmp_path):
    module, data = spiking_module(), PatternDataModule()
    trainer(tmp_path, [ActivationDiagnostics(every_n_steps=1, raster_neurons=50)]).fit(module, data)
    plots = Path(tmp_path, "csv", "version_0", "plots")
    assert (plots / "activations_raster.png").stat().st_size > 10_000
    assert (plots / "activations_plot.png").exists()


def test_raster_draws_signed_graded_spikes_with_either_backend(monkeypatch):
    net = chain_net(0.05)
    x = torch.tensor([[1.0]], dtype=torch.float64)
    free, trace = traced_free_phase(net, x, 6, update="sync", raster_samples=1)
    nudged = traced_nudged_phase(net, x, torch.tensor([0]), free.state, 4, 0.5, "sync", raster_samples=1)[1]
    traces = {"free": trace, "positive": nudged}
    monkeypatch.setattr(nc_callback, "raster_function", lambda: (nc_callback._matplotlib_raster, "matplotlib"))
    fig = spike_raster_figure(traces, ["layer1", "layer2", "output"], "test")
    raster_ax = fig.axes[2]
    points = [c for c in raster_ax.collections if len(c.get_offsets())]
    offsets = torch.tensor(points[0].get_offsets().data)
    # the output's + spikes at free steps 1, 3, 5 (x = step; the nudged phase from x = 7), area ~ graded count
    assert offsets[:3].tolist() == [[1.0, 0.0], [3.0, 1.0], [5.0, 1.0]] and offsets[3:, 0].min() >= 7
    assert points[0].get_sizes()[:3].tolist() == [nc_callback.RASTER_DOT * n for n in (2, 10, 10)]
    negative = torch.tensor(points[1].get_offsets().data)  # the nudge towards class 0 pulls class 1 down
    assert points[1].get_facecolor()[0][2] > 0.5 and negative[:, 0].min() >= 7 and 1 in negative[:, 1].tolist()
    monkeypatch.undo()
    # snntorch.spikeplot imports pandas at import time (not installed with snntorch): a stand-in lets it import
    import snntorch

    monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    try:
        function, name = nc_callback.raster_function()
        assert name == "snntorch.spikeplot" and function.__module__ == "snntorch.spikeplot"
        fig = spike_raster_figure(traces, ["layer1", "layer2", "output"], "test")
        assert torch.tensor(fig.axes[2].collections[0].get_offsets().data)[:3, 0].tolist() == [1.0, 3.0, 5.0]
    finally:
        sys.modules.pop("snntorch.spikeplot", None)
        if hasattr(snntorch, "spikeplot"):
            delattr(snntorch, "spikeplot")


# -- the benchmark -----------------------------------------------------------------------------------------------------


def test_benchmark_runs_in_its_smallest_mode(tmp_path):
    out, figure = tmp_path / "cost.json", tmp_path / "cost.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "neuromorphic_cost.py"), "--quick", "--threads", "1",
               "--samples", "40", "--train-steps", "2", "--batch-size", "20", "--out", str(out), "--plot", str(figure)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["threshold"] for r in records] == [0.003, 0.01, 0.03, None] and all(r["samples"] == 40 for r in records)
    assert [r["kind"] for r in records] == ["ep"] * 3 + ["snntorch_csnn"]
    for r in records:
        assert (0 <= round(r["accuracy"] * r["samples"]) <= r["samples"]  # correct / 40, correct a count of images
                and r["accuracy"] == pytest.approx(round(r["accuracy"] * r["samples"]) / r["samples"], abs=1e-9)
                and r["dense_macs_per_inference"] > 0 and "hardware" in r), r
        assert r["synops_per_inference"] == pytest.approx(sum(r["synops_per_layer"]))
        assert {f"acc_at_{t}" for t in (5, 10, 20, 30)} <= set(r)
    assert records[0]["spikes_per_inference"] > records[2]["spikes_per_inference"]  # a finer threshold spikes more
    csnn = records[3]  # 10 presentation steps: the cuts at 20 and 30 are not run
    assert csnn["steps"] == 10 and csnn["acc_at_20"] is None and csnn["acc_at_10"] == csnn["accuracy"]
    assert csnn["synops_at_5"] <= csnn["synops_at_10"] == pytest.approx(csnn["synops_per_inference"])
    assert "| network | θ |" in done.stdout and figure.stat().st_size > 10_000


# -- snnTorch's conv SNN baseline ------------------------------------------------------------------------------------


def test_csnn_cost_against_hand_counts():
    """A CSNN 1x8x8 -> conv 2 (3x3, padding 1, avg pool: 2x4x4) -> conv 3 (3x3, padding 1, avg pool: 3x2x2) ->
    dense 5 -> 2 outputs. Fan-outs by hand: a conv1 neuron reaches 3 x (the 3x3 padded windows of the 4x4 map that
    contain it: 4 at a corner, 6 on an edge, 9 inside); a conv2 neuron the 5 dense neurons; a hidden one the 2
    outputs; an output nothing. Dense MACs a step: 3*2*100 + 12*5 + 5*2 = 670 (the padded 3x3 windows of a 4x4 map
    hold 10 x 10 = 100 in-bound taps); input MACs, the in-bound taps of conv1 on the 8x8 image: 2 * 1 * 22 * 22."""
    from lightning_ep.baselines import CSNNRun, SnnTorchCSNN
    from lightning_ep.baselines.csnn_cost import csnn_accuracy_at_steps, csnn_cost, csnn_fan_out, csnn_input_macs

    module = SnnTorchCSNN(input_shape=(1, 8, 8), num_classes=2, channels=(2, 3), kernel_size=3, padding=1,
                          hidden=(5,), num_steps=3)
    fan = csnn_fan_out(module)
    corner_edge_inside = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64)
    assert torch.equal(fan[0], (3 * corner_edge_inside).expand(2, 4, 4))
    assert torch.equal(fan[1], torch.full((3, 2, 2), 5.0, dtype=torch.float64))
    assert torch.equal(fan[2], torch.full((5,), 2.0, dtype=torch.float64))
    assert torch.equal(fan[3], torch.zeros(2, dtype=torch.float64))
    assert csnn_input_macs(module) == 2 * 1 * 22 * 22

    conv1 = torch.zeros(2, 2, 4, 4)
    conv1[0, 1, 0, 0] = 2.0  # a corner neuron of sample 0 spiked twice: 2 * 3 * 4 SynOps
    conv1[1, 0, 1, 2] = 1.0  # an inner neuron of sample 1 once: 3 * 9
    conv2, hidden = torch.ones(2, 3, 2, 2), torch.tensor([[1.0, 0, 0, 0, 3], [0, 0, 0, 0, 0]])
    out_steps = torch.tensor([[[0.0, 1], [0, 0]], [[1, 0], [1, 0]], [[1, 0], [0, 0]]])  # (T=3, B=2, C=2)
    run = CSNNRun(out_steps, torch.zeros(3, 2, 2), [], [conv1, conv2, hidden, out_steps.sum(0)])
    cost = csnn_cost(module, run)
    assert cost.spikes == [3.0, 24.0, 4.0, 4.0]
    assert cost.synops == [2 * 3 * 4 + 3 * 9, 24 * 5, 4 * 2, 0.0]
    assert cost.dense_macs == [3 * 2 * 100 * 2 * 3, 12 * 5 * 2 * 3, 5 * 2 * 2 * 3, 0.0]
    assert cost.input_macs == 2 * csnn_input_macs(module)
    # sample 0: counts (0,1) -> (1,1) -> (2,1): argmax 1, 0, 0 -> stable from step 2; sample 1: 0 every step -> 1
    assert cost.latency.tolist() == [2, 1]
    assert csnn_accuracy_at_steps(run, torch.tensor([0, 0]), [1, 2, 3, 30]) == {1: 0.5, 2: 1.0, 3: 1.0, 30: 1.0}
    with pytest.raises(ValueError, match="integers >= 1"):
        csnn_accuracy_at_steps(run, torch.tensor([0, 0]), [1.5])
    with pytest.raises(ValueError, match=r"steps >= 1, batch"):  # no step run: nothing to cut
        csnn_accuracy_at_steps(CSNNRun(out_steps[:0], torch.zeros(0, 2, 2), [], []), torch.tensor([0, 0]), [1])


def test_csnn_simulate_cut_is_the_same_run_stopped_earlier():
    module = tiny_csnn(num_steps=6)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        whole, cut = module.simulate(x), module.simulate(x, steps=4)
    assert torch.equal(cut.output_spikes, whole.output_spikes[:4])
    assert sum(float(n.sum()) for n in whole.neuron_spikes) > 0, "the example should spike"
    with pytest.raises(ValueError, match="steps"):
        module.simulate(x, steps=0)
