"""BPTT of EP's objective (``nudged_bptt_loss``, the default of ``method="bptt"``): averaged over the nudge
strength, its gradient is EP's symmetric estimate, the exact gradient of the loss averaged over the nudged
equilibria."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PatternDataModule, settings
from lightning.pytorch import Trainer, seed_everything
from test_bptt_truncation import cosine, grads, net_and_batch

from lightning_ep import Conv, ConvergentNetwork, Dense, bptt_loss, equilibrium_propagation, relax
from lightning_ep.bptt import draw_nudges, nudged_bptt_loss
from lightning_ep.dynamics import input_drive, start_state
from lightning_ep.module import EPLightningModule

BETA = 0.3


def averaged_gradient(net, x, y, beta: float, t1: int, t2: int, points: int = 64) -> list[torch.Tensor]:
    """(1/2β) ∫_{-β}^{β} d/dθ ℓ(s^{β'}) dβ' by the midpoint rule over nudged BPTT gradients (the integrand has
    kinks where a unit meets a clamp bound, so a higher-order rule does no better)."""
    total = [torch.zeros_like(p) for p in net.parameters()]
    for k in range(points):
        nudge = (-1.0 + (2 * k + 1) / points) * beta
        res = nudged_bptt_loss(net, x, y, nudge, t1, t2)
        assert res.nudged.last_change < 1e-10  # a settled phase: BPTT through it is the equilibrium's gradient
        total = [t + g / points for t, g in zip(total, grads(res.loss, net), strict=True)]
    return total


def test_averaged_over_the_nudge_the_gradient_is_eps_symmetric_estimate():
    """At settled phases the identity is exact: the nudged BPTT gradients averaged over [-β, β] are EP's symmetric
    estimate at β, to the quadrature's error; the free-loss BPTT gradient (β → 0) is far from it."""
    net, x, y = net_and_batch()
    ep = equilibrium_propagation(net, x, y, BETA, 300, 300)
    assert max(p.last_change for p in ep.phases.values()) < 1e-12
    g_ep = grads(ep.surrogate, net)
    g_nudged = averaged_gradient(net, x, y, BETA, 300, 150)
    assert 1 - cosine(g_nudged, g_ep) < 1e-4
    for a, b in zip(g_nudged, g_ep, strict=True):
        assert float((a - b).abs().max()) < 0.02 * float(b.abs().max())
        assert float(a.norm() / b.norm()) == pytest.approx(1.0, abs=0.01)
    g_free = grads(bptt_loss(net, x, y, 300).loss, net)
    assert 1 - cosine(g_free, g_ep) > 0.05


def test_the_graph_goes_through_the_nudged_steps_from_the_free_state():
    """The free phase at ``omega``, without a graph; the nudged steps at ``nudged_omega`` (1), with one."""
    net, x, y = net_and_batch(threshold=0.05)
    res = nudged_bptt_loss(net, x, y, -0.2, 20, 5, start="feedforward", omega=1.3)
    with torch.no_grad():
        drive = input_drive(net, x)
        free = relax(net, drive, start_state(net, drive, "feedforward")[0], 20, omega=1.3)
    nudged = relax(net, input_drive(net, x), free.state.detach(), 5, -0.2, y)  # plain steps by default
    want = net.loss(nudged.state.s, y).mean()
    assert torch.equal(res.loss, want) and res.free.steps == 20 and res.nudged.steps == 5
    torch.testing.assert_close(res.logits, net.logits(free.state.s))
    for a, b in zip(grads(res.loss, net), grads(want, net), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    over = nudged_bptt_loss(net, x, y, -0.2, 20, 5, start="feedforward", omega=1.3, nudged_omega=1.3)
    assert not torch.equal(over.loss, res.loss)


def test_the_nudges_are_drawn_uniformly_from_minus_beta_to_beta_per_sample():
    draws = draw_nudges(0.2, 4000, torch.Generator().manual_seed(0))
    assert draws.shape == (4000,) and draws.min() >= -0.2 and draws.max() <= 0.2
    assert abs(float(draws.mean())) < 0.01 and float(draws.std()) == pytest.approx(0.2 / np.sqrt(3), rel=0.05)
    assert torch.equal(draw_nudges(0.2, 5, torch.Generator().manual_seed(0)), draws[:5])  # the generator's stream


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_a_per_sample_nudge_nudges_each_sample_by_its_own_strength(loss):
    torch.manual_seed(0)
    net = ConvergentNetwork((1, 8, 8), [Conv(4, 3), Dense(12)], 4, loss=loss).double()
    x, y = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 4, (5,))
    nudges = torch.tensor([-0.3, -0.1, 0.0, 0.2, 0.4], dtype=torch.float64)
    drive = input_drive(net, x)
    start = start_state(net, drive, "feedforward")[0]
    together = relax(net, drive, start, 10, nudges, y)
    for k, nudge in enumerate(nudges.tolist()):
        alone = relax(net, drive[k:k + 1], start_state(net, drive[k:k + 1], "feedforward")[0], 10, nudge, y[k:k + 1])
        for a, b in zip(together.state.s, alone.state.s, strict=True):
            torch.testing.assert_close(a[k:k + 1], b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="per-sample beta"):
        relax(net, drive, start, 10, nudges[:3], y)


@pytest.mark.parametrize("nudge", [-1.0, float("nan"), float("inf"), torch.tensor([0.1] * 15 + [-1.5])])
def test_a_bad_nudge_raises(nudge):
    net, x, y = net_and_batch()
    with pytest.raises(ValueError, match="nudge"):
        nudged_bptt_loss(net, x, y, nudge, 5, 5)


def test_the_module_trains_with_nudged_bptt_by_default(tmp_path):
    data = PatternDataModule(held_out=256)
    seed_everything(0)
    shapes = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    model = EPLightningModule(**settings(network=shapes, method="bptt"))
    assert model.bptt.objective == "nudged"
    state = model.generator.get_state()
    Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path).fit(model, data)
    assert not torch.equal(model.generator.get_state(), state)  # the nudges come from the module's generator
    assert Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
        model, data, verbose=False)[0]["test/acc"] > 0.9
    with pytest.raises(ValueError, match="unknown bptt objective 'end'"):
        EPLightningModule(**settings(method="bptt", bptt={"objective": "end"}))
    with pytest.raises(ValueError, match=r"truncate .* needs objective='free'"):  # the free loss only
        EPLightningModule(**settings(method="bptt", bptt={"objective": "nudged", "truncate": 2}))
    truncated = EPLightningModule(**settings(method="bptt", bptt={"objective": "free", "truncate": 2}))
    assert truncated.bptt.truncate == 2
