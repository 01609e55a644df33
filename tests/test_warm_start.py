"""The feed-forward warm start: the sweep is what the energy says (each layer the clamped drive from below with
nothing above), it reaches the same fixed point as a start from zeros (the steps it saves are measured in
benchmarks/), its spikes are counted, and EP from it still matches BPTT through the same warm-started dynamics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import PatternDataModule, settings
from lightning.pytorch import Trainer, seed_everything

from lightning_ep import Conv, ConvergentNetwork, Dense, NetworkState, bptt_loss, equilibrium_propagation, free_phase
from lightning_ep.bptt import nudged_bptt_loss
from lightning_ep.dynamics import feedforward_state, input_drive, start_state
from lightning_ep.module import EPLightningModule
from lightning_ep.neuromorphic import trace_cost, traced_free_phase

NUM_CLASSES = 5


def make_net(pooling="avg", loss="mse", scale=2.0, **neuron):
    torch.manual_seed(0)
    layers = [Conv(4, 3, pooling=pooling), Conv(6, 3, padding=1, pooling=pooling), Dense(16)]
    net = ConvergentNetwork((1, 12, 12), layers, NUM_CLASSES, loss, **neuron).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64), torch.randint(0, NUM_CLASSES, (n,), generator=g)


@pytest.mark.parametrize("pooling", ["avg", "max", "none"])
def test_feedforward_sweep_is_the_clamped_drive_from_below(pooling):
    net = make_net(pooling)
    x, _ = batch()
    with torch.no_grad():
        got = feedforward_state(net, input_drive(net, x))[0].s
    # oracle: autograd of E with every layer above i at zero: -dE/ds_i + s_i is then the drive from below
    states = [torch.zeros(len(x), *shape, dtype=torch.float64) for shape in net.state_shapes]
    for i in range(len(states)):
        leaves = [s.clone().requires_grad_() for s in states]
        (g,) = torch.autograd.grad(net.energy(x, leaves).sum(), [leaves[i]])
        states[i] = (-g + leaves[i].detach()).clamp(0, 1)
    for i, (a, b) in enumerate(zip(got, states, strict=True)):
        assert (a - b).abs().max().item() < 1e-10, f"layer {i + 1}"
    assert any(s.abs().sum() > 0 for s in got[1:])  # not the trivial all-zero state


def test_feedforward_start_reaches_the_same_fixed_point():
    net = make_net("avg", scale=1.5)
    x, _ = batch()
    cold = free_phase(net, x, 400, tol=1e-9)
    warm = free_phase(net, x, 400, tol=1e-9, start="feedforward")
    assert cold.last_change <= 1e-9 and warm.last_change <= 1e-9
    for a, b in zip(cold.state.s, warm.state.s, strict=True):
        assert (a - b).abs().max().item() < 1e-7


def test_feedforward_sweep_spikes_count_in_the_free_phase():
    net = make_net("avg", threshold=0.01)
    x, _ = batch()
    with torch.no_grad():
        state, sent = start_state(net, input_drive(net, x), "feedforward")
    # sent from zero: each layer's reconstruction is a whole number of spikes of size theta
    for r, count in zip(state.r, sent, strict=True):
        assert float(count) == pytest.approx(float(r.abs().sum() / 0.01))
        spikes = r / 0.01
        assert (spikes - spikes.round()).abs().max().item() < 1e-9
    assert sum(float(c) for c in sent) > 0
    one = free_phase(net, x, 1, start="feedforward")
    step_only = free_phase(net, x, 1, start=state)
    for total, sweep, step in zip(one.spikes, sent, step_only.spikes, strict=True):
        assert float(total) == pytest.approx(float(sweep) + float(step))


@pytest.mark.parametrize("truncate", [None, 3])
def test_every_free_phase_is_the_same_one(truncate):
    """EP, both BPTT losses, the traced runner and ``net(x)`` run the one free phase: the same states, and the
    sweep's spikes counted as the phase's in all of them."""
    net = make_net("max", threshold=0.01)
    x, y = batch()
    want = free_phase(net, x, 6, start="feedforward")
    assert float(want.spikes[0]) > float(free_phase(net, x, 6, start=feedforward_state(net, input_drive(net, x))[0])
                                         .spikes[0])  # the sweep's spikes are in
    phases = {
        "ep": equilibrium_propagation(net, x, y, 0.1, 6, 2, start="feedforward").phases["free"],
        "bptt": bptt_loss(net, x, y, 6, start="feedforward", truncate=truncate).free,
        "nudged_bptt": nudged_bptt_loss(net, x, y, 0.1, 6, 2, start="feedforward").free,
        "traced": traced_free_phase(net, x, 6, start="feedforward")[0],
    }
    for name, got in phases.items():
        assert got.steps == want.steps, name
        assert [float(c) for c in got.spikes] == [float(c) for c in want.spikes], name
        for a, b in zip(got.state.s, want.state.s, strict=True):
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-12, msg=name)
    assert trace_cost(net, traced_free_phase(net, x, 6, start="feedforward")[1]).spikes == [float(c) for c in
                                                                                            want.spikes]
    assert torch.equal(net(x, 6, "feedforward"), net.logits(want.state.s))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ep_from_feedforward_start_matches_bptt(loss):
    net = make_net("avg", loss)
    x, y = batch()
    res = bptt_loss(net, x, y, 300, start="feedforward")
    g_bptt = torch.autograd.grad(res.loss, list(net.parameters()))
    assert res.free.last_change < 1e-8
    ep = equilibrium_propagation(net, x, y, 0.001, 300, 100, start="feedforward")
    g_ep = torch.autograd.grad(ep.surrogate, list(net.parameters()))
    for a, b in zip(g_ep, g_bptt, strict=True):
        cos = float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))
        assert cos >= 0.99


def test_unknown_start_is_refused():
    net = make_net()
    x, _ = batch()
    with pytest.raises(ValueError, match="feedforward"):
        free_phase(net, x, 5, start="warm")
    with pytest.raises(ValueError, match="unknown start"):
        EPLightningModule(phases={"start": "warm"})
    assert isinstance(start_state(net, input_drive(net, x), None)[0], NetworkState)


def test_module_starts_every_free_phase_from_the_sweep(tmp_path):
    patterns = PatternDataModule(held_out=256)  # tested on samples it was not trained on
    seed_everything(0)
    network = {"input_shape": patterns.input_shape, "num_classes": patterns.num_classes, "threshold": 0.02}
    model = EPLightningModule(**settings(network=network, phases={"t1": 6, "t2": 4, "start": "feedforward"}))
    trainer = Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, patterns)
    assert trainer.test(model, patterns, verbose=False)[0]["test/acc"] > 0.8
    x = patterns.data.tensors[0][:16]
    model.phases = dataclasses.replace(model.phases, eval_t1=1)
    want = model.net.logits(free_phase(model.net, x, 1, start="feedforward").state.s)
    assert torch.equal(model(x), want)  # inference: one step from the sweep
    assert not torch.equal(want, model.net.logits(free_phase(model.net, x, 1).state.s))


def test_over_relaxed_ep_matches_bptt_through_the_same_dynamics():
    net = make_net("avg", "mse")
    x, y = batch()
    res = bptt_loss(net, x, y, 300, start="feedforward", omega=1.3)
    assert res.free.last_change < 1e-8
    g_bptt = torch.autograd.grad(res.loss, list(net.parameters()))
    ep = equilibrium_propagation(net, x, y, 0.001, 300, 100, start="feedforward", omega=1.3)
    g_ep = torch.autograd.grad(ep.surrogate, list(net.parameters()))
    for a, b in zip(g_ep, g_bptt, strict=True):
        assert float(a.flatten() @ b.flatten() / (a.norm() * b.norm())) >= 0.99
    with pytest.raises(ValueError, match="omega"):
        equilibrium_propagation(net, x, y, 0.1, 5, 5, update="sync", dynamics="autograd", omega=1.3)
    with pytest.raises(ValueError, match="omega"):
        EPLightningModule(phases={"omega": 2.5})
