"""Dithered Sigma-Delta: unbiased transmission, its seeded stream, the same noise for both nudged phases (common
random numbers), states averaged over a phase's last steps, and the module option (validation, checkpoints)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, PatternDataModule, settings
from lightning.pytorch import Trainer, seed_everything

from lightning_ep import (
    Conv,
    ConvergentNetwork,
    Dense,
    NetworkState,
    SigmaDelta,
    bptt_loss,
    equilibrium_propagation,
    relax,
)
from lightning_ep.dynamics import input_drive
from lightning_ep.module import EPLightningModule

NUM_CLASSES = 5


def make_net(threshold: float = 0.05, seed: int = 0, graded: bool = True) -> ConvergentNetwork:
    torch.manual_seed(seed)
    layers = [Conv(4, 3, pooling="avg"), Dense(16)]
    return ConvergentNetwork((1, 10, 10), layers, NUM_CLASSES, "mse", threshold, graded).double()


def batch(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 10, 10, generator=g, dtype=torch.float64), torch.randint(0, NUM_CLASSES, (b,), generator=g)


def fresh_state(seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The state of a generator on ``device`` just seeded with ``seed``: where a stream that drew nothing is."""
    return torch.Generator(device).manual_seed(seed).get_state()


def test_dithered_transmission_is_unbiased_and_deterministic_rounding_is_not():
    """Over many draws, what the receivers hold averages to the state (within 4 standard errors); deterministic
    rounding of the same change is off by a fixed amount."""
    neuron = SigmaDelta(threshold=0.1)
    s = torch.tensor([0.03, 0.26, 0.5, 0.77, 0.99], dtype=torch.float64).repeat(20000, 1)
    r0 = torch.zeros_like(s)
    with torch.no_grad():
        r, spikes = neuron(s, r0, torch.Generator().manual_seed(0))
        r_round, _ = neuron(s, r0)
    assert torch.equal(spikes, torch.round(spikes)), "spike counts must be integers"
    assert ((r - s).abs() < 0.1 + 1e-12).all(), "a dithered count is one of the two nearest"
    err = (r.mean(0) - s[0]).abs()
    assert (err < 4 * 0.05 / 20000**0.5).all(), f"dithered transmission is biased: {err}"
    assert (r_round[0] - s[0]).abs().max() > 0.02, "the rounding example should be biased"


def test_dither_stream_is_seeded_and_needs_graded_spikes():
    neuron = SigmaDelta(threshold=0.1)
    s = torch.rand(8, 3, generator=torch.Generator().manual_seed(3))
    a, _ = neuron(s, None, torch.Generator().manual_seed(5))
    b, _ = neuron(s, None, torch.Generator().manual_seed(5))
    c, _ = neuron(s, None, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="graded=True"):
        SigmaDelta(threshold=0.1, graded=False)(s, None, torch.Generator())
    off, spikes = SigmaDelta(threshold=0.0)(s, None, torch.Generator())
    assert off is s and spikes is None, "dithering a non-spiking neuron changes nothing"


def test_dithered_spikes_pass_the_gradient_straight_through():
    s = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    r, _ = SigmaDelta(threshold=0.1)(s, torch.zeros(4, 3, dtype=torch.float64), torch.Generator().manual_seed(0))
    (r * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(s.grad, torch.arange(3.0, dtype=torch.float64).expand(4, 3))


def test_average_last_is_the_mean_of_the_last_states():
    """``mean_s`` equals the mean of the states after each of the last k steps, replayed one step at a time with
    the same dither stream."""
    net = make_net()
    x, y = batch()
    x_drive = input_drive(net, x)
    start = NetworkState.zeros(net, x.shape[0])
    stream = torch.Generator().manual_seed(2)
    with torch.no_grad():
        whole = relax(net, x_drive, start, 12, 0.3, y, dither=stream, average_last=5)
        g = torch.Generator().manual_seed(2)
        state, seen = start, []
        for _ in range(12):
            state = relax(net, x_drive, state, 1, 0.3, y, dither=g).state
            seen.append(state.s)
    for layer, mean in enumerate(whole.mean_s):
        expected = torch.stack([s[layer] for s in seen[-5:]]).mean(0)
        torch.testing.assert_close(mean, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(whole.state.s[-1], seen[-1][-1], rtol=0, atol=0)
    assert not torch.equal(whole.mean_s[0], whole.state.s[0]), "dithered states fluctuate: the mean is not the last"
    assert not torch.equal(stream.get_state(), fresh_state(2)), "the dithered relaxation drew no noise"
    assert torch.equal(g.get_state(), stream.get_state()), "the replay drew another amount of noise"


@pytest.mark.parametrize(("kw", "match"), [({"average_last": 13}, "in \\[0, 12\\]"),
                                           ({"average_last": -1}, "in \\[0, 12\\]"),
                                           ({"average_last": 3, "tol": 1e-3}, "tol=None")])
def test_average_last_is_validated(kw, match):
    net = make_net()
    x, _ = batch()
    with pytest.raises(ValueError, match=match):
        relax(net, input_drive(net, x), NetworkState.zeros(net, x.shape[0]), 12, **kw)


def test_nudged_phases_replay_the_same_noise():
    """Common random numbers: at a nudge too small to move any spike, the +beta and -beta phases end in the same
    dithered state (with independent streams they would differ by about a threshold); the result is a function
    of the seed."""
    net = make_net()
    x, y = batch()
    runs = [equilibrium_propagation(net, x, y, beta=1e-9, t1=20, t2=10, dither=torch.Generator().manual_seed(4))
            for _ in range(2)]
    pos, neg = runs[0].phases["positive"].state.s, runs[0].phases["negative"].state.s
    assert max(float((a - b).abs().max()) for a, b in zip(pos, neg, strict=True)) < 1e-6
    assert torch.equal(runs[0].surrogate, runs[1].surrogate)
    other = equilibrium_propagation(net, x, y, beta=1e-9, t1=20, t2=10, dither=torch.Generator().manual_seed(5))
    assert not torch.equal(other.free_state.s[0], runs[0].free_state.s[0])


def test_estimate_uses_the_averaged_states():
    """With ``average_last`` the surrogate is the energy difference at the averaged nudged states."""
    net = make_net()
    x, y = batch()
    stream = torch.Generator().manual_seed(0)
    res = equilibrium_propagation(net, x, y, beta=0.2, t1=20, t2=10, dither=stream, average_last=4)
    assert not torch.equal(stream.get_state(), fresh_state(0)), "the dithered phases drew no noise"
    pos, neg = res.phases["positive"].mean_s, res.phases["negative"].mean_s
    expected = ((net.total_energy(x, pos, y, 0.2) - net.total_energy(x, neg, y, -0.2)) / 0.4).mean()
    torch.testing.assert_close(res.surrogate, expected)
    with pytest.raises(ValueError, match="average_last"):
        equilibrium_propagation(net, x, y, beta=0.2, t1=20, t2=10, average_last=11)


def test_module_rejects_dither_where_it_cannot_apply():
    with pytest.raises(ValueError, match="dither"):
        EPLightningModule(**settings(network={"threshold": 0.0}, ep={"dither": True}))
    with pytest.raises(ValueError, match="dither"):
        EPLightningModule(**settings(network={"threshold": 0.05}, ep={"dither": True}, method="bptt"))
    with pytest.raises(ValueError, match="average_last"):
        EPLightningModule(**settings(network={"threshold": 0.05}, ep={"average_last": TINY["phases"]["t2"] + 1}))


def test_module_trains_with_dither_and_checkpoints_its_stream(tmp_path):
    """A dithered module fits; its dither generator's state is saved and restored by a checkpoint."""
    seed_everything(0)
    dm = PatternDataModule()
    model = EPLightningModule(**settings(network={"input_shape": dm.input_shape, "num_classes": dm.num_classes,
                                                  "threshold": 0.05}, ep={"dither": True, "average_last": 4}))
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    trainer.save_checkpoint(tmp_path / "dither.ckpt")
    saved = model.dither_generator.get_state()
    fresh = fresh_state(model.seed, model.dither_generator.device)
    assert not torch.equal(saved, fresh), "training drew no dither noise: the stream is still at its seed"
    model.dither_generator.manual_seed(123)  # moves the stream away from the saved position
    restored = EPLightningModule.load_from_checkpoint(tmp_path / "dither.ckpt")
    assert torch.equal(restored.dither_generator.get_state(), saved)


def _cosines(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """Cosine over all parameters together, and the smallest per tensor."""
    cos = torch.nn.functional.cosine_similarity
    total = float(cos(torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b]), dim=0))
    return total, min(float(cos(u.flatten(), v.flatten(), dim=0)) for u, v in zip(a, b, strict=True))


def test_dithered_spiking_ep_agrees_with_bptt_at_threshold_0_01():
    """The issue's bound at the training threshold 0.01: a lightly trained conv-conv-dense net (float64), EP with
    dithered Sigma-Delta (beta 0.05, T1 300, T2 100, the last 60 nudged steps averaged) against BPTT through 300
    free steps, spiking (straight-through) and non-spiking: cosine >= 0.98 over all parameters and >= 0.95 on
    every tensor. Deterministic rounding at the same settings misses the per-tensor bound (measured 0.87 to the
    non-spiking, 0.89 to the spiking gradient), so the bound is not met by spiking EP as such. (Measured with
    dithering: 0.9991 / 0.9973 to the non-spiking, 0.9920 / 0.9841 to the spiking gradient.)"""
    torch.manual_seed(0)
    net = ConvergentNetwork((1, 12, 12), [Conv(6, 3, pooling="avg"), Conv(8, 3, padding=1, pooling="avg"),
                                          Dense(24)], NUM_CLASSES, "mse", 0.0).double()
    g = torch.Generator().manual_seed(100)
    prototypes = (torch.rand(NUM_CLASSES, 1, 12, 12, generator=g, dtype=torch.float64) > 0.5).double()

    def patterns(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return (0.7 * prototypes[y] + 0.3 * torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64)), y

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(20):  # lightly trained, so that the states are not trivial
        x, y = patterns(32)
        opt.zero_grad()
        equilibrium_propagation(net, x, y, beta=0.2, t1=30, t2=10).surrogate.backward()
        opt.step()
    x, y = patterns(64)

    def gradient(loss: torch.Tensor) -> list[torch.Tensor]:
        return [t.detach() for t in torch.autograd.grad(loss, list(net.parameters()))]

    bptt = {}
    for threshold in (0.0, 0.01):
        net.threshold = threshold
        bptt[threshold] = gradient(bptt_loss(net, x, y, t1=300).loss)
    dithered = gradient(equilibrium_propagation(net, x, y, beta=0.05, t1=300, t2=100, average_last=60,
                                                dither=torch.Generator().manual_seed(0)).surrogate)
    rounded = gradient(equilibrium_propagation(net, x, y, beta=0.05, t1=300, t2=100).surrogate)
    for threshold, reference in bptt.items():
        total, smallest = _cosines(dithered, reference)
        assert total >= 0.98 and smallest >= 0.95, (threshold, total, smallest)
    assert _cosines(rounded, bptt[0.0])[1] < 0.95, "deterministic rounding was expected to miss the bound here"


def test_dither_state_from_another_device_type_is_reseeded_with_a_warning():
    """A CUDA generator's state cannot drive a CPU generator: a checkpoint saved on a GPU and resumed on the CPU
    reseeds (and says so) instead of failing or silently mixing streams."""
    model = EPLightningModule(**settings(network={"threshold": 0.05}, ep={"dither": True}, seed=3))
    model.on_load_checkpoint({"dither_generator_state": torch.zeros(16, dtype=torch.uint8),
                              "dither_generator_device": "cuda"})
    with pytest.warns(UserWarning, match="reseeded with seed=3"):
        generator = model.dither_generator
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(3).get_state())
