"""The Sigma-Delta neuron: reconstruction error, silence at rest, the threshold -> 0 limit, spike counts,
surrogate gradients, and threshold validation."""

from __future__ import annotations

import math

import pytest
import torch
from snntorch import surrogate

from lightning_ep import Conv, ConvergentNetwork, Dense, NetworkState, SigmaDelta, bptt_loss, relax, relax_autograd
from lightning_ep.dynamics import input_drive

NUM_CLASSES = 5


def make_net(pooling="avg", loss="mse", seed=0, **neuron):
    torch.manual_seed(seed)
    layers = [Conv(4, 3, pooling=pooling), Conv(6, 3, padding=1, pooling=pooling), Dense(16)]
    return ConvergentNetwork((1, 12, 12), layers, NUM_CLASSES, loss, **neuron).double()


def batch(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (b,), generator=g)
    return x, y


def random_walk(steps, shape, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(shape, generator=g, dtype=torch.float64)
    out = []
    for _ in range(steps):
        s = (s + scale * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        out.append(s)
    return out


@pytest.mark.parametrize("threshold", [0.05, 0.01, 0.3])
def test_graded_reconstruction_error_within_half_threshold(threshold):
    neuron = SigmaDelta(threshold, graded=True)
    r = None
    for s in random_walk(50, (8, 20)):
        r, spikes = neuron(s, r)
        assert spikes is not None
        assert torch.equal(spikes, spikes.round())  # whole numbers of spikes
        assert (s - r).abs().max().item() <= threshold / 2 + 1e-12
        # the receivers' value is exactly the sum of what was sent
    assert torch.allclose(r / threshold, (r / threshold).round(), atol=1e-9)


def test_graded_silent_once_input_stops_changing():
    neuron = SigmaDelta(0.05, graded=True)
    r = None
    signal = random_walk(20, (8, 20))
    for s in signal:
        r, _ = neuron(s, r)
    counts = []
    for _ in range(5):
        r, spikes = neuron(signal[-1], r)
        counts.append(spikes.abs().sum().item())
    assert all(c == 0 for c in counts[1:]), counts  # at most one step to fall silent ...
    assert counts[0] == 0, counts  # ... and in fact none: |s - r| <= threshold/2 already rounds to zero


def test_single_spikes_catch_up_then_fall_silent():
    threshold = 0.05
    neuron = SigmaDelta(threshold, graded=False, spike_grad=surrogate.atan())
    r = torch.zeros(8, 20, dtype=torch.float64)
    s = torch.rand(8, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    needed = math.ceil(s.max().item() / threshold) + 1
    counts = []
    for _ in range(needed + 3):
        r, spikes = neuron(s, r)
        assert spikes.abs().max().item() <= 1  # at most one signed spike a step
        counts.append(spikes.abs().sum().item())
    assert counts[0] > 0
    assert all(c == 0 for c in counts[needed:]), counts
    assert (s - r).abs().max().item() <= threshold / 2 + 1e-12
    # and with a changing signal, every step moves r by at most one threshold (up to float32 rounding of the
    # amount sent, see test_reconstruction_keeps_the_signal_dtype)
    r = torch.zeros(8, 20, dtype=torch.float64)
    for s in random_walk(30, (8, 20), seed=5, scale=0.02):
        before = r
        r, spikes = neuron(s, r)
        assert (r - before).abs().max().item() <= threshold * (1 + 1e-6)


def test_zero_threshold_is_the_identity():
    neuron = SigmaDelta(0.0)
    s = torch.rand(3, 4)
    r, spikes = neuron(s, torch.zeros(3, 4))
    assert r is s
    assert spikes is None
    assert not neuron.spiking


@pytest.mark.parametrize("graded", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("start", ["none", "zeros"])
def test_reconstruction_keeps_the_signal_dtype(graded, dtype, start):
    # r=None means the receivers hold zeros: the result must not depend on which way that is said
    neuron = SigmaDelta(0.05, graded=graded)
    s = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    r, spikes = neuron(s, None if start == "none" else torch.zeros_like(s))
    assert r.dtype == dtype
    if dtype == torch.float64:
        # the amount sent is a whole number of thresholds in the signal's precision (not float32(0.05))
        assert torch.equal(r, spikes.to(dtype) * 0.05)


def test_tiny_threshold_recovers_the_non_spiking_network():
    net = make_net()
    x, y = batch()
    with torch.no_grad():
        ref = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 60, beta=0.2, y=y)
        net.threshold = 1e-7
        spk = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 60, beta=0.2, y=y)
    for a, b in zip(ref.state.s, spk.state.s, strict=True):
        assert (a - b).abs().max().item() < 1e-6
    for s, r in zip(spk.state.s, spk.state.r, strict=True):
        assert r is not s
        assert (s - r).abs().max().item() <= 0.5e-7 + 1e-15


def test_spike_counts_per_layer():
    net = make_net()
    x, _ = batch()
    with torch.no_grad():
        quiet = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 10)
        net.threshold = 0.01
        loud = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 10)
    assert len(quiet.spikes) == len(loud.spikes) == len(net.blocks)
    assert all(float(c) == 0.0 for c in quiet.spikes)
    assert all(float(c) > 0.0 for c in loud.spikes)
    # a graded spike count is a whole number; the first step alone sends at least |s_1| / threshold - 1/2 a neuron
    for c in loud.spikes:
        assert float(c) == pytest.approx(round(float(c)), abs=1e-6)


def test_spiking_sync_dynamics_match_the_autograd_reference():
    net = make_net("max", threshold=0.02)
    x, y = batch()
    with torch.no_grad():
        a = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 12, beta=0.1, y=y, update="sync")
        b = relax_autograd(net, x, NetworkState.zeros(net, 4), 12, beta=0.1, y=y)
    for u, v in zip(a.state.s + a.state.r, b.state.s + b.state.r, strict=True):
        assert (u - v).abs().max().item() < 1e-10
    for u, v in zip(a.spikes, b.spikes, strict=True):
        assert float(u) == pytest.approx(float(v))


@pytest.mark.parametrize("graded", [True, False])
def test_surrogate_gradients_flow_through_spikes(graded):
    net = make_net(threshold=0.02, graded=graded, spike_grad=None if graded else surrogate.atan())
    x, y = batch()
    res = bptt_loss(net, x, y, 30)
    res.loss.backward()
    assert sum(float(c) for c in res.free.spikes) > 0
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum().item() > 0, name


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_threshold_raises(bad):
    with pytest.raises(ValueError, match="threshold"):
        SigmaDelta(bad)
    with pytest.raises(ValueError, match="threshold"):
        make_net(threshold=bad)
    net = make_net()
    with pytest.raises(ValueError, match="threshold"):
        net.threshold = bad
    assert net.threshold == 0.0


def test_network_threshold_setter_switches_every_layer():
    for loss in ("mse", "ce"):
        net = make_net(loss=loss)
        assert not net.spiking
        net.threshold = 0.03
        assert net.spiking and net.threshold == 0.03
        assert all(b.neuron.threshold == 0.03 and b.neuron.spiking for b in net.blocks)
        net.threshold = 0
        assert not net.spiking
        assert all(b.neuron.threshold == 0.0 and not b.neuron.spiking for b in net.blocks)


@pytest.mark.parametrize("start", ["none", "zeros", "random"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_grad_path_sends_the_same_spikes(start, dtype):
    # the phases run without autograd take a fused path: it must send exactly what the autograd path sends
    g = torch.Generator().manual_seed(0)
    neuron = SigmaDelta(0.01)
    s = torch.rand(4, 50, generator=g).to(dtype)
    r0 = {"none": None, "zeros": torch.zeros_like(s), "random": torch.rand(4, 50, generator=g).to(dtype)}[start]
    with torch.no_grad():
        r_fast, q_fast = neuron(s, r0)
    with torch.enable_grad():
        r_slow, q_slow = neuron(s.clone().requires_grad_(), r0)
    assert torch.equal(q_fast, q_slow.detach())
    assert torch.allclose(r_fast, r_slow.detach(), rtol=0, atol=4 * torch.finfo(dtype).eps)
    assert s.dtype == r_fast.dtype == dtype
