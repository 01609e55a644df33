"""The GDU property: at a settled fixed point the EP estimate equals the BPTT gradient of the loss, the symmetric
estimator more closely than the one-sided one; the alignment bound is strict enough to reject wrong estimates."""

from __future__ import annotations

import pytest
import torch

from lightning_ep import Conv, ConvergentNetwork, Dense, bptt_loss, equilibrium_propagation, free_phase, relax
from lightning_ep.dynamics import input_drive

NUM_CLASSES = 5
BATCH = 16
T1, T2 = 300, 100
BOUND = 0.99


def make_net(pooling="avg", loss="mse", seed=0, **neuron):
    torch.manual_seed(seed)
    layers = [Conv(4, 3, pooling=pooling), Conv(6, 3, padding=1, pooling=pooling), Dense(16)]
    net = ConvergentNetwork((1, 12, 12), layers, NUM_CLASSES, loss, **neuron).double()
    with torch.no_grad():  # larger weights: states away from the trivial all-clamped / near-zero regime
        for p in net.parameters():
            p.mul_(2.0)
    return net


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    return x, y


def take_grads(net):
    out = [p.grad.detach().clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    return out


def bptt_grads(net, x, y, t1=T1):
    net.zero_grad(set_to_none=True)
    res = bptt_loss(net, x, y, t1)
    res.loss.backward()
    return take_grads(net), res


def ep_grads(net, x, y, beta, estimator="symmetric", t1=T1, t2=T2, **kw):
    net.zero_grad(set_to_none=True)
    res = equilibrium_propagation(net, x, y, beta, t1, t2, estimator, **kw)
    res.surrogate.backward()
    return take_grads(net), res


def cosines(a, b):
    out = []
    for u, v in zip(a, b, strict=True):
        nu, nv = u.norm(), v.norm()
        out.append(0.0 if nu == 0 or nv == 0 else float((u.flatten() @ v.flatten()) / (nu * nv)))
    return out


def rel_error(g, ref):
    g, ref = torch.cat([t.flatten() for t in g]), torch.cat([t.flatten() for t in ref])
    return float((g - ref).norm() / ref.norm())


def aligned(g, ref, bound=BOUND):
    return min(cosines(g, ref)) >= bound


@pytest.fixture(scope="module")
def reference():
    """BPTT gradients per loss on the shared net and batch (computed once)."""
    return {}


def get_bptt(reference, loss, x, y):
    if loss not in reference:
        net = make_net(loss=loss)
        g, res = bptt_grads(net, x, y)
        # the alignment figure means something only at a fixed point: check the free phase settled
        assert res.free.last_change < 1e-8
        reference[loss] = g
    return reference[loss]


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_symmetric_ep_matches_bptt(loss, data, reference):
    x, y = data
    g_bptt = get_bptt(reference, loss, x, y)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in g_bptt)
    g_sym, res = ep_grads(make_net(loss=loss), x, y, 0.001, "symmetric")
    assert res.phases["free"].last_change < 1e-8
    cos = cosines(g_sym, g_bptt)
    err = rel_error(g_sym, g_bptt)
    print(f"\n[{loss}] symmetric beta=0.001: min cosine {min(cos):.8f}, relative error {err:.2e}")
    assert min(cos) >= BOUND, cos
    assert err < 1e-3


@pytest.mark.parametrize(("loss", "beta"), [("mse", 0.001), ("ce", 0.001), ("ce", 0.05)])
def test_symmetric_beats_one_sided(loss, beta, data, reference):
    x, y = data
    g_bptt = get_bptt(reference, loss, x, y)
    net = make_net(loss=loss)
    g_sym, _ = ep_grads(net, x, y, beta, "symmetric")
    g_one, _ = ep_grads(net, x, y, beta, "one_sided")
    e_sym, e_one = rel_error(g_sym, g_bptt), rel_error(g_one, g_bptt)
    print(f"\n[{loss}] beta={beta}: relative error symmetric {e_sym:.2e}, one-sided {e_one:.2e}")
    assert e_sym < e_one
    assert e_sym < 0.5 * e_one  # the O(beta^2) vs O(beta) bias shows clearly, not by a hair


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ep_matches_bptt_with_label_smoothing(loss, data, reference):
    """EP nudges towards the smoothed target, so its estimate is the gradient of the smoothed loss: it matches
    BPTT of that loss, not the one-hot gradient."""
    x, y = data
    g_bptt, res = bptt_grads(make_net(loss=loss, label_smoothing=0.2), x, y)
    assert res.free.last_change < 1e-8
    g_ep, _ = ep_grads(make_net(loss=loss, label_smoothing=0.2), x, y, 0.001, "symmetric")
    cos, err = cosines(g_ep, g_bptt), rel_error(g_ep, g_bptt)
    print(f"\n[{loss}, label smoothing 0.2] min cosine {min(cos):.8f}, relative error {err:.2e}")
    assert min(cos) >= BOUND, cos
    assert err < 1e-3
    assert rel_error(g_ep, get_bptt(reference, loss, x, y)) > 0.01  # the one-hot gradient is another


def test_spiking_ep_matches_bptt_through_spikes(data):
    x, y = data
    net = make_net(loss="mse", threshold=0.001)
    g_bptt, res_b = bptt_grads(net, x, y, 200)
    g_ep, res_e = ep_grads(net, x, y, 0.05, "symmetric", t1=200, t2=60)
    assert sum(float(c) for c in res_b.free.spikes) > 0
    assert all(float(c) > 0 for c in res_e.phases["positive"].spikes)
    cos = cosines(g_ep, g_bptt)
    print(f"\n[spiking, threshold 0.001, avg, mse] min cosine {min(cos):.4f} (per tensor {[round(c, 4) for c in cos]})")
    assert all(torch.isfinite(g).all() for g in g_ep + g_bptt)
    assert min(cos) >= 0.95, cos


def test_alignment_bound_rejects_wrong_estimates(data, reference):
    x, y = data
    for loss in ("mse", "ce"):
        g_bptt = get_bptt(reference, loss, x, y)
        net = make_net(loss=loss)
        g_ep, res = ep_grads(net, x, y, 0.001, "symmetric")
        assert aligned(g_ep, g_bptt)
        # control 1: the sign of the estimate flipped
        flipped = [-g for g in g_ep]
        assert not aligned(flipped, g_bptt)
        assert max(cosines(flipped, g_bptt)) < -0.9
        # control 2: the estimate taken between two free states (no nudged phase): only the loss's explicit
        # parameter dependence survives (nothing for mse, the read-out for ce)
        s0 = [t.detach() for t in res.free_state.s]
        net.zero_grad(set_to_none=True)
        beta = 0.001
        surrogate = ((net.total_energy(x, s0, y, beta) - net.total_energy(x, s0, y, 0.0)) / beta).mean()
        surrogate.backward()
        g_free = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]
        net.zero_grad(set_to_none=True)
        assert not aligned(g_free, g_bptt)
        cos = cosines(g_free, g_bptt)
        print(f"\n[{loss}] free-free control: per-tensor cosines {[round(c, 3) for c in cos]}")
        assert min(cos) < 0.5
        # control 3: gradients of the right norm in a random direction
        gen = torch.Generator().manual_seed(0)
        noise = [torch.randn(g.shape, generator=gen, dtype=g.dtype) * g.norm() / g.numel() ** 0.5 for g in g_bptt]
        assert not aligned(noise, g_bptt)


# torch.rand((), generator=Generator().manual_seed(seed)) is 0.496 for seed 0 (< 0.5: +beta) and 0.535 for seed 7
# (-beta); the test checks this rather than trusting it.
SIGN_SEEDS = {"positive": 0, "negative": 7}


def negative_one_sided_grads(net, x, y, beta, t1=T1, t2=T2):
    """The one-sided estimate with a -beta phase, built by hand: (F(s-, -beta) - F(s0, 0)) / (-beta)."""
    net.zero_grad(set_to_none=True)
    free = free_phase(net, x, t1)
    with torch.no_grad():
        nudged = relax(net, input_drive(net, x), free.state, t2, -beta, y)
    surrogate = ((net.total_energy(x, nudged.state.s, y, -beta) - net.total_energy(x, free.state.s, y, 0.0))
                 / -beta).mean()
    surrogate.backward()
    return take_grads(net)


@pytest.mark.parametrize("sign", ["positive", "negative"])
def test_random_sign_draws_either_sign_and_gives_that_one_sided_estimate(sign, data, reference):
    """Each sign is exercised: the seed's draw is the sign named, the estimate is deterministic under that seed,
    equals the one-sided estimate of that sign and is aligned with BPTT."""
    x, y = data
    net = make_net(loss="mse")
    seed, beta = SIGN_SEEDS[sign], 0.001
    draw = float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
    assert (draw < 0.5) == (sign == "positive"), f"seed {seed} draws {draw:.3f}: not the {sign} sign"
    g1, r1 = ep_grads(net, x, y, beta, "random_sign", generator=torch.Generator().manual_seed(seed))
    g2, r2 = ep_grads(net, x, y, beta, "random_sign", generator=torch.Generator().manual_seed(seed))
    assert set(r1.phases) == set(r2.phases) == {"free", sign}
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    if sign == "positive":
        g_one, _ = ep_grads(net, x, y, beta, "one_sided")
    else:
        g_one = negative_one_sided_grads(net, x, y, beta)
    for a, b in zip(g1, g_one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert r1.phases[sign].last_change < 1e-7
    assert aligned(g1, get_bptt(reference, "mse", x, y))


def test_random_sign_draws_both_signs_and_replays_them(data):
    x, y = data
    net = make_net(loss="mse")
    # over 20 draws from one generator both signs occur (short phases: only the sign is looked at)
    gen = torch.Generator().manual_seed(0)
    signs = []
    for _ in range(20):
        res = equilibrium_propagation(net, x[:2], y[:2], 0.1, 2, 1, "random_sign", generator=gen)
        nudged = set(res.phases) - {"free"}
        assert len(nudged) == 1
        signs.append(nudged.pop())
    assert set(signs) == {"positive", "negative"}
    # the same seed replays the same sequence of signs
    gen = torch.Generator().manual_seed(0)
    replay = []
    for _ in range(20):
        res = equilibrium_propagation(net, x[:2], y[:2], 0.1, 2, 1, "random_sign", generator=gen)
        replay.append("positive" if "positive" in res.phases else "negative")
    assert replay == signs


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_max_pooling_ep_matches_bptt(loss, data):
    """Max pooling, non-spiking, float64, settled phases, beta 0.001: EP's gradient is BPTT's (measured: every
    per-tensor cosine > 0.9999999, relative error 8e-6 (mse) and 3e-6 (ce); wrong max-unpooling indices in the
    dynamics give cosine 0.50). At beta 0.01 a sample of this batch leaves for another fixed point in the mse -beta
    phase and the estimate breaks down (smallest per-tensor cosine -0.64): beta must stay small against the
    distance to the next argmax switch."""
    x, y = data
    net = make_net("max", loss=loss)
    g_bptt, res_b = bptt_grads(net, x, y)
    assert res_b.free.last_change < 1e-8
    g_ep, res = ep_grads(net, x, y, 0.001, "symmetric")
    for name, phase in res.phases.items():
        assert phase.last_change < (1e-8 if name == "free" else 1e-7), (name, phase.last_change)
    cos, err = cosines(g_ep, g_bptt), rel_error(g_ep, g_bptt)
    print(f"\n[max pooling, non-spiking, {loss}, beta 0.001] min cosine {min(cos):.8f}, relative error {err:.2e}")
    assert all(g.abs().sum() > 0 for g in g_bptt)
    assert min(cos) >= BOUND, cos
    assert err < 1e-3
