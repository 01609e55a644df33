"""The GDU property: at a settled fixed point the EP estimate equals the BPTT gradient of the loss, the symmetric
estimator more closely than the one-sided one; the alignment bound is strict enough to reject wrong estimates."""

from __future__ import annotations

import pytest
import torch

from lightning_ep import Conv, ConvergentNetwork, Dense, bptt_loss, equilibrium_propagation

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


def test_random_sign_is_deterministic_under_a_seeded_generator(data, reference):
    x, y = data
    net = make_net(loss="mse")
    g1, r1 = ep_grads(net, x, y, 0.001, "random_sign", generator=torch.Generator().manual_seed(7))
    g2, r2 = ep_grads(net, x, y, 0.001, "random_sign", generator=torch.Generator().manual_seed(7))
    assert set(r1.phases) == set(r2.phases)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    # whichever sign it drew, the estimate is the matching one-sided one and is aligned with BPTT
    assert aligned(g1, get_bptt(reference, "mse", x, y))
    if "positive" in r1.phases:
        g_one, _ = ep_grads(net, x, y, 0.001, "one_sided")
        assert all(torch.equal(a, b) for a, b in zip(g1, g_one, strict=True))
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


def test_negative_random_sign_is_aligned_too(data, reference):
    x, y = data
    net = make_net(loss="mse")
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # find a seed state that draws the negative sign
        state = gen.get_state()
        if torch.rand((), generator=gen) >= 0.5:
            break
    gen.set_state(state)
    g, res = ep_grads(net, x, y, 0.001, "random_sign", generator=gen)
    assert "negative" in res.phases
    assert aligned(g, get_bptt(reference, "mse", x, y))


def test_max_pooling_non_spiking_gives_finite_gradients(data):
    x, y = data
    net = make_net("max", loss="mse")
    g_bptt, _ = bptt_grads(net, x, y)
    for beta in (0.001, 0.05):
        g_ep, res = ep_grads(net, x, y, beta, "symmetric")
        assert torch.isfinite(res.surrogate)
        assert all(torch.isfinite(g).all() for g in g_ep)
        assert all(g.abs().sum() > 0 for g in g_ep)
        # measured, not asserted (the benchmark's job): ~1.0 at beta 0.001; at beta >= 0.01 one sample of the
        # batch leaves for another fixed point in the -beta phase and the cosine falls (about -0.4 at 0.05)
        moved = max(
            (a - b).abs().max().item() for a, b in zip(res.phases["negative"].state.s, res.free_state.s, strict=True)
        )
        print(
            f"\n[max pooling, non-spiking, beta {beta}] min cosine {min(cosines(g_ep, g_bptt)):.4f}, "
            f"largest move of the -beta phase {moved:.3f} (not asserted)"
        )
