"""The explicit dynamics against the energy: closed-form drives equal autograd of F = E + beta * loss, the
synchronous step equals the autograd reference step, the async output update has the prototypical fixed point,
and the async free phase is block-coordinate descent of E (non-increasing, settles)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lightning_ep import Conv, ConvergentNetwork, Dense, NetworkState, relax, relax_autograd
from lightning_ep.dynamics import _drive, _IndexCache, _nudged, input_drive

NUM_CLASSES = 5
POOLINGS = ("avg", "max", "none")
LOSSES = ("mse", "ce")


def make_net(pooling="avg", loss="mse", input_shape=(1, 12, 12), seed=0, scale=1.0, **neuron):
    torch.manual_seed(seed)
    layers = [Conv(4, 3, pooling=pooling), Conv(6, 3, padding=1, pooling=pooling), Dense(16)]
    net = ConvergentNetwork(input_shape, layers, NUM_CLASSES, loss, **neuron).double()
    if scale != 1.0:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
    return net


def random_batch(net, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    s = [torch.rand(batch, *shape, generator=g, dtype=torch.float64) for shape in net.state_shapes]
    return x, y, s


def autograd_drives(net, x, s, y, beta):
    """``-dF/ds_i + s_i`` for every layer, by autograd of the network's total energy."""
    leaves = [t.detach().clone().requires_grad_() for t in s]
    f = net.total_energy(x, leaves, y, beta).sum()
    grads = torch.autograd.grad(f, leaves)
    return [-g + t.detach() for g, t in zip(grads, leaves, strict=True)]


def closed_form_drives(net, x, s, y, beta):
    n = len(s)
    x_drive = input_drive(net, x)
    cache = _IndexCache(n)
    target = net.targets(y, x.dtype)
    out = []
    for i in range(n):
        d = _drive(net, i, x_drive, s, cache)
        if i == n - 1 and beta != 0.0:
            d = _nudged(net, d, s[i], beta, target, exact=False)
        out.append(d)
    return out


@pytest.mark.parametrize(("pooling", "loss"), list(itertools.product(POOLINGS, LOSSES)))
@pytest.mark.parametrize("beta", [0.0, 0.3, -0.2])
def test_closed_form_drive_equals_autograd_of_energy(pooling, loss, beta):
    net = make_net(pooling, loss)
    x, y, s = random_batch(net)
    with torch.no_grad():
        got = closed_form_drives(net, x, s, y, beta)
    want = autograd_drives(net, x, s, y, beta)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape == s[i].shape
        err = (a - b).abs().max().item()
        assert err < 1e-5, f"layer {i + 1}: closed form vs autograd differ by {err}"


@pytest.mark.parametrize("pooling", POOLINGS)
def test_odd_spatial_size_matches_autograd(pooling):
    # 13x13 -> conv3 -> 11x11 -> pool2 -> 5x5 (a row and a column dropped); the adjoint must pad them back
    net = make_net(pooling, "mse", input_shape=(1, 13, 13))
    if pooling != "none":
        assert net.blocks[0].conv_hw == (11, 11)
        assert net.state_shapes[0] == (4, 5, 5)
    x, y, s = random_batch(net)
    with torch.no_grad():
        got = closed_form_drives(net, x, s, y, 0.2)
    want = autograd_drives(net, x, s, y, 0.2)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() < 1e-5


def test_rgb_input_with_padding_shapes():
    torch.manual_seed(0)
    layers = [Conv(4, 5, padding=2), Conv(6, 3, padding=1), Dense(8)]
    net = ConvergentNetwork((3, 32, 32), layers, 10).double()
    assert net.state_shapes == [(4, 16, 16), (6, 8, 8), (8,), (10,)]
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 7])
    with torch.no_grad():
        res = relax(net, input_drive(net, x), NetworkState.zeros(net, 2), 3, beta=0.1, y=y)
    assert [tuple(t.shape) for t in res.state.s] == [(2, *shape) for shape in net.state_shapes]
    _, _, s = random_batch(net, batch=2)
    with torch.no_grad():
        got = closed_form_drives(net, x, s, y, 0.1)
    want = autograd_drives(net, x, s, y, 0.1)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize(("pooling", "loss"), list(itertools.product(POOLINGS, LOSSES)))
@pytest.mark.parametrize("beta", [0.0, 0.25])
def test_sync_step_is_clamped_autograd_drive(pooling, loss, beta):
    net = make_net(pooling, loss)
    x, y, s = random_batch(net)
    want = [d.clamp(0.0, 1.0) for d in autograd_drives(net, x, s, y, beta)]
    with torch.no_grad():
        res = relax(net, input_drive(net, x), NetworkState(list(s), list(s)), 1, beta=beta, y=y, update="sync")
    assert res.steps == 1
    for a, b in zip(res.state.s, want, strict=True):
        assert (a - b).abs().max().item() < 1e-10
    # and the same step taken by the autograd reference dynamics
    with torch.no_grad():
        ref = relax_autograd(net, x, NetworkState(list(s), list(s)), 1, beta=beta, y=y)
    for a, b in zip(res.state.s, ref.state.s, strict=True):
        assert (a - b).abs().max().item() < 1e-10
    assert res.last_change == pytest.approx(ref.last_change, abs=1e-10)


@pytest.mark.parametrize("loss", LOSSES)
def test_label_smoothing_nudges_as_autograd_of_the_smoothed_energy(loss):
    """With label smoothing, the closed-form nudged drive and a synchronous step of ``relax`` equal autograd of
    ``F = E + beta * loss`` with the smoothed loss, and differ from the one-hot network's."""
    net = make_net("avg", loss, label_smoothing=0.2)
    x, y, s = random_batch(net)
    want = autograd_drives(net, x, s, y, 0.3)
    with torch.no_grad():
        got = closed_form_drives(net, x, s, y, 0.3)
        step = relax(net, input_drive(net, x), NetworkState(list(s), list(s)), 1, beta=0.3, y=y, update="sync")
    for a, b, c in zip(got, want, step.state.s, strict=True):
        assert (a - b).abs().max().item() < 1e-5
        assert (c - b.clamp(0.0, 1.0)).abs().max().item() < 1e-10
    one_hot = autograd_drives(make_net("avg", loss), x, s, y, 0.3)
    assert (one_hot[-1] - want[-1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("loss", LOSSES)
def test_label_smoothing_loss_is_its_formula(loss):
    net = make_net("avg", loss, label_smoothing=0.1)
    _, y, s = random_batch(net)
    target = torch.full((len(y), NUM_CLASSES), 0.1 / NUM_CLASSES, dtype=torch.float64)
    target[torch.arange(len(y)), y] += 0.9
    assert torch.allclose(net.targets(y, torch.float64), target)
    out = net.logits(s)
    want = (0.5 * (out - target).pow(2).sum(1) if loss == "mse"
            else -(target * F.log_softmax(out, dim=1)).sum(1))
    assert torch.allclose(net.loss(s, y), want)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), True])
def test_label_smoothing_outside_zero_to_one_is_refused(value):
    from lightning_ep.config import NetworkConfig

    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        make_net(label_smoothing=value)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        NetworkConfig(label_smoothing=value)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_relax_autograd_matches_sync_over_several_steps(pooling):
    net = make_net(pooling, "mse", scale=2.0)
    x, y, _ = random_batch(net)
    with torch.no_grad():
        a = relax(net, input_drive(net, x), NetworkState.zeros(net, 3), 8, beta=0.2, y=y, update="sync")
        b = relax_autograd(net, x, NetworkState.zeros(net, 3), 8, beta=0.2, y=y)
    for u, v in zip(a.state.s, b.state.s, strict=True):
        assert (u - v).abs().max().item() < 1e-10


def _prototypical_async(net, x, state, steps, beta, y):
    """Async (even, then odd layers) dynamics with the prototypical output update ``d + beta (y - s_L)``."""
    x_drive = input_drive(net, x)
    s = list(state.s)
    n = len(s)
    y1h = F.one_hot(y, net.num_classes).to(x.dtype)
    for _ in range(steps):
        for group in (range(0, n, 2), range(1, n, 2)):
            cache = _IndexCache(n)
            new = {}
            for i in group:
                d = _drive(net, i, x_drive, s, cache)
                if i == n - 1:
                    d = _nudged(net, d, s[i], beta, y1h, exact=False)
                new[i] = d.clamp(0.0, 1.0)
            for i, v in new.items():
                s[i] = v
    return s


@pytest.mark.parametrize("beta", [0.3, -0.3, 0.8])
def test_async_closed_form_output_has_prototypical_fixed_point(beta):
    net = make_net("avg", "mse", scale=2.0)
    x, y, _ = random_batch(net, batch=4)
    with torch.no_grad():
        free = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 200, tol=1e-13)
        exact = relax(net, input_drive(net, x), free.state, 300, beta=beta, y=y, tol=1e-13)
        proto = _prototypical_async(net, x, free.state, 400, beta, y)
    assert exact.last_change < 1e-12
    # the fixed point of the closed-form update differs from the free state (the nudge does something) ...
    assert (exact.state.s[-1] - free.state.s[-1]).abs().max().item() > 1e-3
    # ... and is the fixed point of the prototypical update
    for a, b in zip(exact.state.s, proto, strict=True):
        assert (a - b).abs().max().item() < 1e-9
    # at that point one prototypical step moves nothing
    again = _prototypical_async(net, x, exact.state, 1, beta, y)
    for a, b in zip(exact.state.s, again, strict=True):
        assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("pooling", ["avg", "none"])
def test_async_free_phase_never_increases_energy(pooling):
    net = make_net(pooling, "mse", scale=3.0)
    x, _, s = random_batch(net, batch=4)
    x_drive = input_drive(net, x)
    for state in (NetworkState.zeros(net, 4), NetworkState(list(s), list(s))):
        energies = [net.energy(x, state.s)]
        with torch.no_grad():
            for _ in range(30):
                state = relax(net, x_drive, state, 1).state
                energies.append(net.energy(x, state.s))
        e = torch.stack(energies)  # (steps + 1, batch): every sample's energy on its own
        rises = (e[1:] - e[:-1]).max().item()
        assert rises <= 1e-9, f"the energy rose by {rises} in one async step"
        assert (e[-1] < e[0] - 1e-3).all()


def test_async_nudged_phase_never_increases_total_energy_mse():
    net = make_net("avg", "mse", scale=3.0)
    x, y, _ = random_batch(net, batch=4)
    x_drive = input_drive(net, x)
    with torch.no_grad():
        state = relax(net, x_drive, NetworkState.zeros(net, 4), 50).state
        for beta in (0.5, -0.5):
            cur = state
            energies = [net.total_energy(x, cur.s, y, beta)]
            for _ in range(30):
                cur = relax(net, x_drive, cur, 1, beta=beta, y=y).state
                energies.append(net.total_energy(x, cur.s, y, beta))
            e = torch.stack(energies)
            assert (e[1:] - e[:-1]).max().item() <= 1e-9


@pytest.mark.parametrize("loss", LOSSES)
def test_async_free_phase_settles(loss):
    net = make_net("avg", loss, scale=3.0)
    x, y, _ = random_batch(net, batch=4)
    with torch.no_grad():
        res = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 300)
        early = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 300, tol=1e-6)
    assert res.last_change < 1e-8
    # a fixed point: the state is the clamped drive of itself
    want = [d.clamp(0, 1) for d in autograd_drives(net, x, res.state.s, y, 0.0)]
    for a, b in zip(res.state.s, want, strict=True):
        assert (a - b).abs().max().item() < 1e-7
    # tol stops early and reports the steps it took
    assert early.steps < 300
    assert early.last_change <= 1e-6


@pytest.mark.parametrize(("shape", "kernel", "padding", "size"),
                         [((3, 12, 12), 5, 0, 2), ((2, 13, 13), 3, 1, 2), ((2, 14, 15), 3, 0, 3)])
def test_folded_average_pooling_equals_conv_then_pool(shape, kernel, padding, size):
    """The avg-pool block folds the pooling into a strided conv; check it against conv then avg_pool2d (an oracle
    independent of the block) and its feedback against autograd of that composition."""
    import torch.nn.functional as F

    from lightning_ep.blocks import SpikingConv2d

    torch.manual_seed(0)
    block = SpikingConv2d(shape, 4, kernel, padding, "avg", size).double()
    s = torch.rand(3, *shape, dtype=torch.float64, requires_grad=True)
    reference = F.avg_pool2d(block.conv(s), size)
    torch.testing.assert_close(block.forward_drive(s)[0], reference, rtol=0, atol=1e-12)
    v = torch.rand_like(reference)
    (grad,) = torch.autograd.grad((reference * v).sum(), s)
    torch.testing.assert_close(block.feedback(v, None), grad, rtol=0, atol=1e-12)


def test_folded_weight_memo_follows_weight_updates():
    """Outside autograd the folded weight is memoised; an optimizer step (in place) or a new tensor refreshes it,
    and under autograd it is rebuilt so gradients reach the conv weight."""
    import copy
    import pickle

    from lightning_ep.blocks import SpikingConv2d

    block = SpikingConv2d((2, 10, 10), 3, 3)
    with torch.no_grad():
        first = block.avg_pooled_weight()
        assert block.avg_pooled_weight() is first
        block.conv.weight.mul_(2.0)
        torch.testing.assert_close(block.avg_pooled_weight(), 2.0 * first)
    block.conv.weight = torch.nn.Parameter(torch.zeros_like(block.conv.weight))
    with torch.no_grad():
        assert block.avg_pooled_weight().abs().max() == 0
    block.conv.weight.data.normal_()
    block.forward_drive(torch.rand(1, 2, 10, 10))[0].sum().backward()
    assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0
    clone = pickle.loads(pickle.dumps(block))
    assert copy.deepcopy(block) is not None and clone._pooled_weight is None


@pytest.mark.parametrize("omega", [0.7, 1.4])
def test_relaxation_factor_keeps_the_fixed_point(omega):
    net = make_net("avg", "mse")
    x, _, _ = random_batch(net, batch=4)
    with torch.no_grad():
        plain = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 400, tol=1e-12)
        over = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 400, tol=1e-12, omega=omega)
    assert plain.last_change <= 1e-12 and over.last_change <= 1e-12
    for a, b in zip(plain.state.s, over.state.s, strict=True):
        assert (a - b).abs().max().item() < 1e-9
    with pytest.raises(ValueError, match="omega"):
        relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 5, omega=2.0)


def test_relaxation_reports_the_mean_change_of_its_last_step():
    net = make_net("avg", "mse", scale=2.0)
    x, _, _ = random_batch(net, batch=4)
    with torch.no_grad():
        start = relax(net, input_drive(net, x), NetworkState.zeros(net, 4), 3).state
        last = relax(net, input_drive(net, x), start, 1)
    deltas = [(a - b).abs() for a, b in zip(last.state.s, start.s, strict=True)]
    assert last.last_change == pytest.approx(max(float(d.max()) for d in deltas))
    assert last.mean_change == pytest.approx(sum(float(d.sum()) for d in deltas) / sum(d.numel() for d in deltas))
    assert 0.0 < last.mean_change < last.last_change


@pytest.mark.parametrize("loss", LOSSES)
def test_calling_the_network_gives_the_free_phase_logits(loss):
    """``net(x)``: the logits at the end of the free phase (60 steps from zeros by default, as
    ``equilibrium_propagation``'s free phase), without an autograd graph, also when autograd is on."""
    from lightning_ep import free_phase

    net = make_net("avg", loss, scale=2.0)
    x, _, _ = random_batch(net, batch=4)
    out = net(x)
    assert out.shape == (4, NUM_CLASSES) and not out.requires_grad
    torch.testing.assert_close(out, net.logits(free_phase(net, x, 60).state.s), rtol=0, atol=0)
    assert not torch.equal(out, net.logits(free_phase(net, x, 3).state.s))  # the default runs more than a few steps
    warm = net(x, t1=5, start="feedforward", omega=1.3)
    torch.testing.assert_close(warm, net.logits(free_phase(net, x, 5, start="feedforward", omega=1.3).state.s),
                               rtol=0, atol=0)
    early = free_phase(net, x, 60, tol=1e-3)
    assert early.steps < 60
    torch.testing.assert_close(net(x, tol=1e-3), net.logits(early.state.s), rtol=0, atol=0)
