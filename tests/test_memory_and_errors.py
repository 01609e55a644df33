"""EP's memory does not grow with the number of dynamics steps (BPTT's does); bad settings and inputs raise a
ValueError that names the problem; non-finite dynamics raise DivergenceError instead of a silent NaN."""

from __future__ import annotations

import pytest
import torch

from lightning_ep import (
    Conv,
    ConvergentNetwork,
    Dense,
    DivergenceError,
    bptt_loss,
    equilibrium_propagation,
    free_phase,
    nudged_bptt_loss,
    two_conv_two_dense,
)
from lightning_ep.memory import count_saved_bytes

NUM_CLASSES = 5


def make_net(pooling="avg", loss="mse", seed=0, **neuron):
    torch.manual_seed(seed)
    layers = [Conv(4, 3, pooling=pooling), Conv(6, 3, padding=1, pooling=pooling), Dense(16)]
    return ConvergentNetwork((1, 12, 12), layers, NUM_CLASSES, loss, **neuron)


def batch(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 12, 12, generator=g), torch.randint(0, NUM_CLASSES, (b,), generator=g)


# -- memory ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_ep_saved_bytes_flat_bptt_grows(pooling, threshold):
    net = make_net(pooling, threshold=threshold)
    x, y = batch()
    ep, bp = {}, {}
    for t1, t2 in ((5, 3), (40, 3), (40, 30)):
        with count_saved_bytes() as saved:
            res = equilibrium_propagation(net, x, y, 0.1, t1, t2)
        res.surrogate.backward()
        ep[t1, t2] = saved.bytes
    for t1 in (5, 40):
        with count_saved_bytes() as saved:
            res = bptt_loss(net, x, y, t1)
        res.loss.backward()
        bp[t1] = saved.bytes
    assert ep[5, 3] > 0
    assert ep[5, 3] == ep[40, 3] == ep[40, 30], ep  # EP: one local step of autograd, whatever T1 and T2
    assert bp[40] > 4 * bp[5], bp  # BPTT: every step's graph
    assert ep[40, 3] < bp[40]


# -- bad settings and inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net_and_batch():
    return make_net(), *batch()


@pytest.mark.parametrize(
    ("make_x", "match"),
    [
        (lambda x: x[:, :, :11], "does not match the network's input_shape"),
        (lambda x: x[0], "does not match the network's input_shape"),
        (lambda x: x.repeat(1, 3, 1, 1), "does not match the network's input_shape"),
        (lambda x: x.flatten(1), "does not match the network's input_shape"),
        (lambda x: x.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN"),
        (lambda x: x.index_put((torch.tensor([1]),), torch.tensor(float("inf"))), "inf"),
    ],
)
def test_bad_input_raises(net_and_batch, make_x, match):
    net, x, y = net_and_batch
    bad = make_x(x.clone())
    with pytest.raises(ValueError, match=match):
        equilibrium_propagation(net, bad, y[: bad.shape[0]] if bad.dim() == 4 else y, 0.1, 2, 1)
    with pytest.raises(ValueError, match=match):
        bptt_loss(net, bad, y[: bad.shape[0]] if bad.dim() == 4 else y, 2)
    with pytest.raises(ValueError, match=match):
        free_phase(net, bad, 2)
    with pytest.raises(ValueError, match=match):
        net(bad)


def test_free_phase_on_a_wrong_shape_names_the_input_not_a_kernel():
    """A 28x28 batch into a net built for 8x8 inputs: the error names the input shape (it used to be a raw size
    mismatch from inside the folded convolution)."""
    net = two_conv_two_dense((1, 8, 8), hidden=16, padding=2)
    with pytest.raises(ValueError, match=r"input of shape \(2, 1, 28, 28\) does not match the network's "
                                         r"input_shape \(1, 8, 8\)"):
        free_phase(net, torch.rand(2, 1, 28, 28), 3)


def test_bad_free_phase_settings_raise(net_and_batch):
    net, x, _ = net_and_batch
    for t1 in (0, 2.5, True):
        with pytest.raises(ValueError, match="t1"):
            free_phase(net, x, t1)
    with pytest.raises(ValueError, match="unknown dynamics 'implicit'"):
        free_phase(net, x, 2, dynamics="implicit")
    with pytest.raises(ValueError, match="update='sync'"):
        free_phase(net, x, 2, dynamics="autograd")  # the default update order is async


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_labels_of_any_dtype_give_the_int64_gradients(loss, dtype):
    """Labels of any integer dtype are class indices: EP's and BPTT's gradients equal those of int64 labels."""
    net = make_net(loss=loss)
    x, y = batch()
    params = list(net.parameters())
    objectives = {
        "ep": lambda labels: equilibrium_propagation(net, x, labels, 0.1, 6, 4).surrogate,
        "bptt": lambda labels: bptt_loss(net, x, labels, 6).loss,
    }
    for name, objective in objectives.items():
        want = torch.autograd.grad(objective(y), params)
        got = torch.autograd.grad(objective(y.to(dtype)), params)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b), f"{name} with {dtype} labels differs from int64"


@pytest.mark.parametrize(
    ("make_y", "match"),
    [
        (lambda y: y.clone().fill_(NUM_CLASSES), r"labels must lie in \[0, 5\)"),
        (lambda y: y.clone().fill_(-1), r"labels must lie in \[0, 5\)"),
        (lambda y: y.clone().fill_(NUM_CLASSES).int(), r"labels must lie in \[0, 5\), got range \[5, 5\]"),
        (lambda y: y.clone().fill_(-1).to(torch.int8), r"labels must lie in \[0, 5\), got range \[-1, -1\]"),
        (lambda y: y.to(torch.uint8).fill_(200), r"labels must lie in \[0, 5\)"),
        (lambda y: y.float(), "labels must be integer class indices.*got torch.float32"),
        (lambda y: y.double(), "labels must be integer class indices.*got torch.float64"),
        (lambda y: y.bool(), "labels must be integer class indices.*got torch.bool"),
        (lambda y: torch.nn.functional.one_hot(y, NUM_CLASSES), "labels must be integer class indices of shape"),
        (lambda y: y[:2], "labels must be integer class indices of shape"),
        (lambda y: y[:, None], "labels must be integer class indices of shape"),
    ],
)
def test_bad_labels_raise(net_and_batch, make_y, match):
    net, x, y = net_and_batch
    with pytest.raises(ValueError, match=match):
        equilibrium_propagation(net, x, make_y(y), 0.1, 2, 1)
    with pytest.raises(ValueError, match=match):
        bptt_loss(net, x, make_y(y), 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta must be a finite number > 0"),
        ({"beta": -0.1}, "beta must be a finite number > 0"),
        ({"beta": float("nan")}, "beta must be a finite number > 0"),
        ({"beta": float("inf")}, "beta must be a finite number > 0"),
        ({"beta": 1.0}, "beta must be < 1 with the mse output"),
        ({"beta": 1.5, "estimator": "random_sign"}, "beta must be < 1 with the mse output"),
        ({"t1": 0}, "t1"),
        ({"t2": -1}, "t2"),
        ({"t1": 2.5}, "t1"),
        ({"t2": 1.0}, "t2"),
        ({"estimator": "two_sided"}, "unknown estimator 'two_sided'"),
        ({"update": "random"}, "unknown update order 'random'"),
        ({"dynamics": "implicit"}, "unknown dynamics 'implicit'"),
        ({"dynamics": "autograd", "update": "async"}, "update='sync'"),
    ],
)
def test_bad_ep_settings_raise(net_and_batch, kwargs, match):
    net, x, y = net_and_batch
    args = {"beta": 0.1, "t1": 2, "t2": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        equilibrium_propagation(net, x, y, **args)


def test_large_beta_allowed_where_it_is_sound(net_and_batch):
    net, x, y = net_and_batch
    equilibrium_propagation(net, x, y, 1.5, 2, 1, "one_sided")  # no -beta phase: fine with mse
    ce = make_net(loss="ce")
    equilibrium_propagation(ce, x, y, 1.5, 2, 1, "symmetric")  # cross-entropy has no 1 - beta > 0 condition


def test_bad_bptt_settings_raise(net_and_batch):
    net, x, y = net_and_batch
    for t1 in (0, -3, 2.5):
        with pytest.raises(ValueError, match="t1"):
            bptt_loss(net, x, y, t1)
    with pytest.raises(ValueError, match="unknown update order"):
        bptt_loss(net, x, y, 2, update="backwards")


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: make_net("maxx"), "unknown pooling 'maxx'"),
        (lambda: make_net(loss="hinge"), "unknown loss 'hinge'"),
        (lambda: ConvergentNetwork((1, 12, 12), [Dense(8), Conv(4, 3)]), "Conv layer cannot follow a Dense"),
        (lambda: ConvergentNetwork((1, 12, 12), [Conv(4, 13)]), "does not fit"),
        (lambda: ConvergentNetwork((1, 12, 12), [Conv(4, 5), Conv(4, 5)]), "does not fit"),
        (lambda: ConvergentNetwork((1, 4, 4), [Conv(4, 4)]), "pooling"),  # 1x1 conv output, 2x2 pooling
        (lambda: ConvergentNetwork((1, 12, 12), [Conv(4, 3, padding=-1)]), "padding"),
        (lambda: ConvergentNetwork((1, 12, 12), [Dense(0)]), "features"),
        (lambda: ConvergentNetwork((1, 12, 12), [Dense(8)], num_classes=1), "num_classes"),
        (lambda: ConvergentNetwork((1, 0, 12), [Dense(8)]), "input_shape"),
        (lambda: ConvergentNetwork((1, 12, 12), [], loss="ce"), "hidden layer"),
        (lambda: two_conv_two_dense(pooling="maxx"), "unknown pooling 'maxx'"),
        (lambda: two_conv_two_dense((1, 8, 8)), r"two_conv_two_dense\(input_shape=\(1, 8, 8\), kernel_size=5, "
                                                r"padding=0\) does not fit its input: pass padding=2"),
        (lambda: two_conv_two_dense((1, 8, 8), kernel_size=3), "pass padding=1 to two_conv_two_dense"),
        (lambda: two_conv_two_dense((1, 2, 2), kernel_size=1), "2x2 inputs are too small for 2 conv"),
        (lambda: ConvergentNetwork((1, 12, 12), [Conv(4, 5), Conv(4, 5)]),
         r"layer 2, Conv\(channels=4, kernel_size=5, padding=0.*Give this layer padding=1"),
    ],
)
def test_bad_architecture_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_two_conv_two_dense_with_padding_builds_small_inputs():
    net = two_conv_two_dense((1, 8, 8), channels=(4, 6), hidden=16, padding=2)
    assert net.state_shapes == [(4, 4, 4), (6, 2, 2), (16,), (10,)]
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 3, 9])
    equilibrium_propagation(net, x, y, 0.1, 3, 2).surrogate.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_conv_on_flat_input_raises():
    with pytest.raises(ValueError, match="channels, height, width"):
        ConvergentNetwork((144,), [Conv(4, 3)])


# -- divergence -------------------------------------------------------------------------------------------------
def _poison(net, where, value):
    params = {
        "conv1.weight": net.blocks[0].conv.weight,
        "conv2.weight": net.blocks[1].conv.weight,
        "conv2.bias": net.blocks[1].conv.bias,
        "dense.weight": net.blocks[2].linear.weight,
        "dense.bias": net.blocks[2].linear.bias,
        "out.bias": net.blocks[3].linear.bias,
    }
    with torch.no_grad():
        params[where].view(-1)[0] = value


@pytest.mark.parametrize("where", ["conv1.weight", "conv2.weight", "conv2.bias", "dense.weight", "dense.bias"])
def test_nan_parameter_raises_divergence(where):
    net = make_net()
    x, y = batch()
    _poison(net, where, float("nan"))
    with pytest.raises(DivergenceError, match=r"diverged: layer \d+'s state holds NaN/inf"):
        equilibrium_propagation(net, x, y, 0.1, 10, 5)
    with pytest.raises(DivergenceError, match="diverged"):
        bptt_loss(net, x, y, 10)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_readout_stops_bptt(value):
    """With the ce readout, a non-finite readout weight leaves every state finite (the readout is outside the
    free dynamics), so only the loss shows it: both BPTT objectives must raise, not backpropagate a NaN."""
    net = make_net(loss="ce")
    x, y = batch()
    with torch.no_grad():
        net.readout.weight[0, 0] = value
    assert torch.isfinite(free_phase(net, x, 10).state.s[-1]).all()  # the states alone do not show it
    with pytest.raises(DivergenceError, match=r"BPTT loss is (nan|inf)"):
        bptt_loss(net, x, y, 10)
    with pytest.raises(DivergenceError):  # the nudge goes through the readout: the state or the loss is NaN
        nudged_bptt_loss(net, x, y, 0.1, 10, 5)


def test_nan_in_spiking_network_raises_divergence():
    net = make_net(threshold=0.05)
    x, y = batch()
    _poison(net, "conv2.weight", float("nan"))
    with pytest.raises(DivergenceError, match="diverged"):
        equilibrium_propagation(net, x, y, 0.1, 10, 5)


@pytest.mark.parametrize("where", ["conv1.weight", "conv2.weight", "dense.weight", "out.bias"])
@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_infinite_parameter_never_gives_a_silent_nan(where, value):
    """An infinite parameter must stop EP with an error. The hard-sigmoid clamp can turn an infinite drive
    into a finite state (clamp(inf) = 1), so a check of the states alone is not enough: the energy at those
    states is inf - inf = NaN, and without a check the surrogate comes back NaN with no error."""
    net = make_net()
    x, y = batch()
    _poison(net, where, value)
    with pytest.raises((DivergenceError, ValueError)):  # DivergenceError, or a ValueError naming the parameter
        res = equilibrium_propagation(net, x, y, 0.1, 10, 5)
        # reached only when no error was raised: show what came back silently
        res.surrogate.backward()
        grads_finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.parameters())
        pytest.fail(f"no error: surrogate {res.surrogate.item()}, gradients finite: {grads_finite}")
