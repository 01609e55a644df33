"""Truncated BPTT (``bptt_loss(..., truncate=k)``): the gradient through the last k free steps only."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, PatternDataModule, settings
from lightning.pytorch import Trainer, seed_everything

from lightning_ep import Conv, ConvergentNetwork, Dense, bptt_loss, relax
from lightning_ep.dynamics import input_drive, start_state
from lightning_ep.module import EPLightningModule


def net_and_batch(threshold: float = 0.0) -> tuple[ConvergentNetwork, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = ConvergentNetwork((1, 8, 8), [Conv(4, 3), Dense(12)], 4, threshold=threshold).double()
    with torch.no_grad():  # biases that keep every layer inside (0, 1), where the gradient flows
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.add_(0.3)
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    return net, x, torch.randint(0, 4, (16,))


def grads(loss: torch.Tensor, net: ConvergentNetwork) -> list[torch.Tensor]:
    """d loss / d parameters (zeros for parameters the truncated graph does not reach)."""
    params = list(net.parameters())
    found = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    va, vb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(va @ vb / (va.norm() * vb.norm()))


def test_truncating_at_t1_is_full_bptt():
    net, x, y = net_and_batch()
    full, same = bptt_loss(net, x, y, 20), bptt_loss(net, x, y, 20, truncate=20)
    for a, b in zip(grads(full.loss, net), grads(same.loss, net), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_the_gradient_goes_through_the_last_k_steps_from_the_state_reached(threshold):
    net, x, y = net_and_batch(threshold)
    res = bptt_loss(net, x, y, 20, truncate=5, start="feedforward")
    with torch.no_grad():
        drive = input_drive(net, x)
        start, sweep = start_state(net, drive, "feedforward")
        head = relax(net, drive, start, 15)
    tail = relax(net, input_drive(net, x), head.state.detach(), 5)
    want = net.loss(tail.state.s, y).mean()
    assert torch.equal(res.loss, want) and res.free.steps == 20
    for a, b in zip(grads(res.loss, net), grads(want, net), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if threshold:  # the spikes of both parts are counted, and the sweep's, as in every free phase
        counted = [float(a + b + c) for a, b, c in zip(head.spikes, tail.spikes, sweep, strict=True)]
        assert [float(s) for s in res.free.spikes] == counted
        assert sum(head.spikes) > 0 and sum(sweep) > 0


def test_at_a_settled_state_a_long_enough_truncation_gives_the_full_gradient():
    """Once the free phase has settled, the early steps add nothing: the truncated gradient is the full one; a
    one-step truncation is not (it misses the feedback through the other layers)."""
    net, x, y = net_and_batch()
    full = bptt_loss(net, x, y, 300)
    assert full.free.last_change < 1e-12
    g_full = grads(full.loss, net)
    assert cosine(grads(bptt_loss(net, x, y, 300, truncate=150).loss, net), g_full) > 0.9999
    assert cosine(grads(bptt_loss(net, x, y, 300, truncate=1).loss, net), g_full) < 0.9


@pytest.mark.parametrize("truncate", [0, 21, 2.5])
def test_bad_truncation_raises(truncate):
    net, x, y = net_and_batch()
    with pytest.raises(ValueError, match="truncate"):
        bptt_loss(net, x, y, 20, truncate=truncate)


def test_the_module_trains_with_truncated_bptt(tmp_path):
    data = PatternDataModule(held_out=256)
    seed_everything(0)
    shapes = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    model = EPLightningModule(**settings(network=shapes, method="bptt", bptt={"objective": "free", "truncate": 5}))
    Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path).fit(model, data)
    assert Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
        model, data, verbose=False)[0]["test/acc"] > 0.8
    with pytest.raises(ValueError, match=r"bptt.truncate \(21\) must be <= phases.t1 \(20\)"):
        EPLightningModule(**settings(method="bptt", bptt={"objective": "free", "truncate": TINY["phases"]["t1"] + 1}))
