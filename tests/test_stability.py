"""The energy's curvature over the active units, against its Hessian taken by autograd of the energy."""

import pytest
import torch

from lightning_ep import free_phase
from lightning_ep.network import Conv, ConvergentNetwork, Dense
from lightning_ep.stability import active_coupling_eigenvalue, curvature_penalty


def _net(pooling: str = "avg") -> ConvergentNetwork:
    torch.manual_seed(0)
    net = ConvergentNetwork((1, 6, 6), [Conv(2, kernel_size=3, pooling=pooling), Dense(5)], num_classes=3).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # strong couplings: a large active set has an eigenvalue above 1
    return net


def _oracle(net: ConvergentNetwork, x: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
    """Per sample: the largest eigenvalue of I - H over the active units, H the Hessian of E(x, s) in s."""
    out = []
    sizes = [s[0].numel() for s in states]
    for b in range(x.shape[0]):
        flat = torch.cat([s[b : b + 1].flatten() for s in states])

        def energy(v: torch.Tensor, b: int = b) -> torch.Tensor:
            parts = torch.split(v, sizes)
            return net.energy(x[b : b + 1], [p.view(1, *s.shape[1:]) for p, s in zip(parts, states, strict=True)])[0]

        hess = torch.autograd.functional.hessian(energy, flat)
        active = (flat > 0) & (flat < 1)
        a = (torch.eye(len(flat), dtype=flat.dtype) - hess)[active][:, active]
        out.append(torch.linalg.eigvalsh(a).max() if active.any() else flat.new_zeros(()))
    return torch.stack(out)


def _inputs_and_spread_states(
    net: ConvergentNetwork, seed: int, widest: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """6 inputs and arbitrary states (the curvature is a property of any state), from almost all units active
    (sample 0) to few (sample 5, spread ``widest`` times wider): units pushed below 0 or above 1 are clamped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64, generator=g)
    spread = torch.linspace(1.0, widest, 6, dtype=torch.float64)
    states = [(torch.rand(6, *shape, dtype=torch.float64, generator=g) - 0.5).mul_(
        spread.view(-1, *[1] * len(shape))).add_(0.5).clamp_(0, 1) for shape in net.state_shapes]
    return x, states


def test_largest_active_eigenvalue_matches_the_energy_hessian():
    net = _net()
    x, states = _inputs_and_spread_states(net, seed=1, widest=6.0)
    assert any(((s > 0) & (s < 1)).any() for s in states)
    assert any(((s == 0) | (s == 1)).any() for s in states)  # some units clamped: the restriction matters
    got = active_coupling_eigenvalue(net, states, iters=400, generator=torch.Generator().manual_seed(0))
    want = _oracle(net, x, states)
    assert torch.allclose(got, want.clamp_min(0), rtol=1e-4, atol=1e-6), (got, want)
    # both sides of 1 occur, or the test would not tell a minimum from a saddle
    assert (want < 1).any() and (want > 1).any(), want


def test_few_power_iterations_estimate_the_eigenvalue_from_below():
    """Cut short, the estimate is a Rayleigh quotient: never above the exact eigenvalue (what lets
    ``CurvatureConfig(iters=...)`` trade rounds for samples missed, never for false alarms)."""
    net = _net()
    x, states = _inputs_and_spread_states(net, seed=2, widest=4.0)
    exact = _oracle(net, x, states).clamp_min(0)
    short = [active_coupling_eigenvalue(net, states, iters=n) for n in (1, 2, 4, 8)]
    for est in short:
        assert (est <= exact + 1e-9).all(), (est, exact)
    assert (short[0] < exact - 1e-3).any()  # one round falls short somewhere, or the test shows nothing
    assert torch.allclose(active_coupling_eigenvalue(net, states, iters=400), exact, rtol=1e-4, atol=1e-6)


def test_a_converged_non_spiking_free_phase_is_a_minimum():
    """Weak couplings: the energy is convex, the relaxation settles, and the eigenvalue is below 1."""
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.div_(10.0)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    free = free_phase(net, x, 200)
    assert free.last_change < 1e-10
    assert (active_coupling_eigenvalue(net, free.state.s) < 1).all()


def test_max_pooling_is_refused_with_a_reason():
    net = _net("max")
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="average pooling or none"):
        active_coupling_eigenvalue(net, free_phase(net, x, 5).state.s)


def test_penalty_gradient_is_the_eigenvalue_gradient():
    """Hellmann-Feynman: the penalty's gradient in the weights is the gradient of the largest active eigenvalue
    (of the samples above the bound, averaged), here against autograd through ``eigvalsh`` of the energy's
    Hessian taken with its graph."""
    net = _net()
    g = torch.Generator().manual_seed(3)
    spread = torch.linspace(1.0, 6.0, 6, dtype=torch.float64)
    states = [(torch.rand(6, *shape, dtype=torch.float64, generator=g) - 0.5).mul_(
        spread.view(-1, *[1] * len(shape))).add_(0.5).clamp_(0, 1) for shape in net.state_shapes]
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64, generator=g)
    bound = 1.2
    penalty, values = curvature_penalty(net, states, bound, iters=500, generator=torch.Generator().manual_seed(0))
    params = [p for p in net.parameters()]
    got = torch.autograd.grad(penalty, params, allow_unused=True)

    sizes = [s[0].numel() for s in states]
    want_value = torch.zeros((), dtype=torch.float64)
    above = 0
    oracle_terms = []
    for b in range(6):
        flat = torch.cat([s[b : b + 1].flatten() for s in states])

        def energy(v: torch.Tensor, b: int = b) -> torch.Tensor:
            parts = torch.split(v, sizes)
            return net.energy(x[b : b + 1], [p.view(1, *s.shape[1:]) for p, s in zip(parts, states, strict=True)])[0]

        hess = torch.autograd.functional.hessian(energy, flat, create_graph=True)
        active = (flat > 0) & (flat < 1)
        lam = torch.linalg.eigvalsh((torch.eye(len(flat), dtype=flat.dtype) - hess)[active][:, active]).max()
        if lam > bound:
            above += 1
            oracle_terms.append(lam - bound)
            want_value = want_value + (lam.detach() - bound)
    assert 0 < above < 6  # both kinds of sample, or the hinge is not tested
    want = torch.autograd.grad(sum(oracle_terms) / 6, params, allow_unused=True)
    assert torch.allclose(penalty.detach(), want_value / 6, rtol=1e-6)
    assert ((values > bound).sum() == above)
    for p, a, b in zip(params, got, want, strict=True):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8), (p.shape, (a - b).abs().max())


def _train(curvature_bound: float | None, steps: int, weight: float = 1.0, every_n_batches: int = 1
           ) -> tuple[object, dict]:
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ep.module import EPLightningModule

    torch.manual_seed(0)
    curvature = (None if curvature_bound is None
                 else {"bound": curvature_bound, "weight": weight, "every_n_batches": every_n_batches})
    module = EPLightningModule(network={"input_shape": (1, 12, 12), "channels": [4], "kernel_size": 3,
                                        "hidden": [24], "threshold": 0.0},
                               phases={"t1": 15, "t2": 5}, ep={"beta": 0.2}, curvature=curvature,
                               optim={"optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "scheduler": "none"})
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(64, 1, 12, 12, generator=g), torch.randint(0, 10, (64,), generator=g)),
                      batch_size=16)
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, data)
    return module, dict(trainer.callback_metrics)


@pytest.mark.parametrize("every_n_batches", [1, 2])
def test_curvature_bound_in_training_lowers_the_curvature(every_n_batches):
    """Training with a curvature bound (a low one, so that the penalty acts on most samples) ends with lower active
    eigenvalues on held-out states than the same training without it (measured: 0.36 against 0.66; 0.37 with the
    lazy penalty, every second batch at twice the weight), every layer keeping active units (not the degenerate
    way down, a layer clamped whole), and logs them."""
    x = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    eig = {}
    for bound in (None, 0.4):
        module, metrics = _train(bound, 20, every_n_batches=every_n_batches)
        assert ("train/curvature_epoch" in metrics) == (bound is not None)
        with torch.no_grad():
            states = free_phase(module.net, x, 60).state.s
        assert all(((s > 0) & (s < 1)).float().mean() > 0.1 for s in states)
        eig[bound] = float(active_coupling_eigenvalue(module.net, states).mean())
    assert eig[0.4] < 0.7 * eig[None], eig


def test_curvature_bound_arguments_are_checked():
    from lightning_ep.module import EPLightningModule

    with pytest.raises(ValueError, match=r"average pooling or none.*curvature=None"):
        EPLightningModule(network={"pooling": "max"})
    with pytest.raises(ValueError, match="must be > 0"):
        EPLightningModule(curvature={"bound": 0.0})
    with pytest.raises(ValueError, match="must be > 0"):
        EPLightningModule(curvature={"bound": 0.9, "weight": -1.0})
    with pytest.raises(ValueError, match="curvature iters"):
        EPLightningModule(curvature={"iters": 0})
    with pytest.raises(ValueError, match="every_n_batches must be an integer >= 1"):
        EPLightningModule(curvature={"every_n_batches": 0})
    EPLightningModule(network={"pooling": "max"}, curvature=None)  # max pooling without the penalty


def test_a_lazy_curvature_penalty_acts_every_n_batches_at_n_times_the_weight(monkeypatch):
    """With ``every_n_batches=3`` the penalty is computed on batches 0 and 3 of six only and enters the objective at
    three times its weight; the other batches train on EP's surrogate alone."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ep.module import EPLightningModule

    module = EPLightningModule(network={"input_shape": (1, 12, 12), "channels": [4], "kernel_size": 3,
                                        "hidden": [24], "threshold": 0.0},
                               phases={"t1": 5, "t2": 3}, curvature={"weight": 2.0, "every_n_batches": 3})
    penalised, added = [], {}
    monkeypatch.setattr(EPLightningModule, "_curvature_penalty",
                        lambda self, free, batch: penalised.append(self.trainer.fit_loop.batch_idx)
                        or torch.tensor(7.0))
    monkeypatch.setattr(EPLightningModule, "_optimize", lambda self, objective, batch_idx: added.update(
        {batch_idx: float((objective - self.last_result.surrogate).detach())}))
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(96, 1, 12, 12, generator=g), torch.randint(0, 10, (96,), generator=g)),
                      batch_size=16)
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu").fit(module, data)
    assert penalised == [0, 3]
    assert added == {0: 42.0, 1: 0.0, 2: 0.0, 3: 42.0, 4: 0.0, 5: 0.0}  # 3 x weight 2 x penalty 7
