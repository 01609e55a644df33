"""EPLightningModule: fits, evaluates under inference mode, resumes, trains with BPTT, stops on divergence."""

from __future__ import annotations

import pytest
import torch
from conftest import PatternDataModule, needs_fmnist, require_data, settings
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_ep import DivergenceError
from lightning_ep.config import NetworkConfig, PhasesConfig
from lightning_ep.module import EPLightningModule
from lightning_ep.optimization import OptimConfig


def _trainer(tmp_path, **kw) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kw})


def _module(dm: PatternDataModule, network: dict | None = None, **groups) -> EPLightningModule:
    shapes = {"input_shape": dm.input_shape, "num_classes": dm.num_classes}
    return EPLightningModule(**settings(network={**shapes, **(network or {})}, **groups))


@pytest.mark.parametrize("method", ["ep", "bptt"])
def test_fit_learns_synthetic_patterns(tmp_path, method):
    """Accuracy on 256 held-out samples (the training patterns under fresh noise, never trained on)."""
    seed_everything(0)
    patterns = PatternDataModule(held_out=256)
    model = _module(patterns, method=method, network={"threshold": 0.0})
    trainer = _trainer(tmp_path, max_epochs=8, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(model, patterns)
    acc = trainer.test(model, patterns, verbose=False)[0]["test/acc"]
    assert acc > 0.8, f"{method} reached only {acc:.2f} on held-out samples of 4 separable classes (chance 0.25)"
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss_step", "train/acc_step", "val/acc", "train/change_free_step"):
        assert key in logged, f"{key} not logged; got {logged}"
    if method == "ep":
        assert "train/change_positive_step" in logged and "train/change_negative_step" in logged


def test_spiking_fit_logs_spike_rates(tmp_path):
    seed_everything(0)
    patterns = PatternDataModule(held_out=256)  # the accuracy below is on samples never trained on
    model = _module(patterns, network={"threshold": 0.02})
    trainer = _trainer(tmp_path, max_epochs=3, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(model, patterns)
    metrics = trainer.logged_metrics
    rates = {k: float(v) for k, v in metrics.items() if "spike_rate" in k}
    assert rates and all(0.0 < r < 10.0 for r in rates.values()), rates
    assert trainer.test(model, patterns, verbose=False)[0]["test/acc"] > 0.6


def test_cross_entropy_and_other_shapes(tmp_path):
    dm = PatternDataModule(shape=(1, 13, 13), num_classes=7, n=64)
    model = _module(dm, network=dict(loss="ce", pooling="max", padding=1, channels=[3, 5], hidden=[8, 8]),
                    ep={"estimator": "one_sided"})
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, dm)
    assert model(dm.data.tensors[0][:5]).shape == (5, 7)


def test_held_out_samples_are_not_the_training_samples():
    default, split = PatternDataModule(), PatternDataModule(held_out=64)
    assert all(torch.equal(a, b) for a, b in zip(default.data.tensors, split.data.tensors, strict=True))
    assert default.eval_data is default.data  # without held_out, validation and test use the training samples
    held_x, held_y = split.eval_data.tensors
    train_x = split.data.tensors[0]
    assert len(held_y) == 64 and set(held_y.tolist()) == set(range(split.num_classes))
    assert torch.cdist(held_x.flatten(1), train_x.flatten(1)).min() > 0.1  # no training sample among them


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("method", ["ep", "bptt"])
def test_int32_labels_train_and_validate_like_int64(tmp_path, method, loss):
    """A DataModule of int32 labels trains and validates exactly as with int64 labels (they used to pass the input
    check and then crash in one_hot / cross_entropy)."""
    dm = PatternDataModule(n=64)
    x, y = dm.data.tensors
    runs = {}
    for dtype in (torch.int64, torch.int32):
        seed_everything(0)
        model = _module(dm, method=method, network={"loss": loss}, phases={"t1": 6, "t2": 4},
                        optim={"scheduler": "none"})
        loader = DataLoader(TensorDataset(x, y.to(dtype)), batch_size=32)
        _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, loader)
        metrics = _trainer(tmp_path).validate(model, loader, verbose=False)[0]
        runs[dtype] = metrics, [p.detach().clone() for p in model.parameters()]
    (want, want_params), (got, got_params) = runs[torch.int64], runs[torch.int32]
    assert got == want
    assert all(torch.equal(a, b) for a, b in zip(got_params, want_params, strict=True))


def test_validation_runs_under_inference_mode(tmp_path, patterns):
    model = _module(patterns)
    trainer = _trainer(tmp_path, inference_mode=True)
    out = trainer.validate(model, patterns, verbose=False)[0]
    with torch.no_grad():  # the same accuracy, from the module's own predictions over the same loader
        hits = [(model(x).argmax(1) == y).sum().item() for x, y in patterns.val_dataloader()]
    assert out["val/acc"] == pytest.approx(sum(hits) / len(patterns.eval_data))
    assert torch.isfinite(torch.tensor(out["val/loss"]))


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, patterns):
    """A two-epoch run interrupted after its first epoch and resumed from the checkpoint ends with the same
    parameters as the uninterrupted run (the random-sign estimator's generator, the optimizer, the LR schedule
    and the data order all travel with the checkpoint)."""

    class Interrupt(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: EPLightningModule) -> None:
            trainer.should_stop = True

    def fit(callbacks: list, ckpt: str | None = None) -> tuple[EPLightningModule, Trainer]:
        seed_everything(0)
        model = _module(patterns, ep={"estimator": "random_sign"})
        trainer = _trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, PatternDataModule(), ckpt_path=ckpt)
        return model, trainer

    straight, _ = fit([])
    first, trainer = fit([Interrupt()])
    assert trainer.current_epoch == 1
    trainer.save_checkpoint(tmp_path / "interrupted.ckpt")
    resumed, _ = fit([], str(tmp_path / "interrupted.ckpt"))
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} differs after resume")
    assert not torch.equal(first.net.blocks[0].conv.weight, resumed.net.blocks[0].conv.weight)


def test_gradient_clipping_and_sgd(tmp_path, patterns):
    model = _module(patterns, optim=dict(optimizer="sgd", lr=0.05, gradient_clip_val=1e-3, scheduler="none"))
    before = [p.detach().clone() for p in model.parameters()]
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, patterns)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert 0 < step.norm() <= 0.05 * 1e-3 * 1.0001  # lr * clipped gradient norm


@pytest.mark.parametrize("method", ["ep", "bptt"])
def test_divergence_stops_training(tmp_path, patterns, method):
    model = _module(patterns, method=method)
    with torch.no_grad():
        model.net.blocks[1].linear.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="NaN/inf"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, patterns)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ep={"beta": 0.0}), "beta"),
        (dict(phases={"t1": 0}), "t1"),
        (dict(method="hebb"), "method"),
        (dict(network={"pooling": "maxx"}), "pooling"),
        (dict(optim={"optimizer": "lbfgsx"}), "optimizer"),
        (dict(optim={"gradient_clip_val": -1.0}), "gradient_clip_val"),
    ],
)
def test_bad_hyperparameters_raise(patterns, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(patterns, **kwargs)


def test_wrong_input_shape_is_a_clear_error(patterns):
    model = _module(patterns)
    with pytest.raises(ValueError, match="does not match the network's input_shape"):
        model(torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("ci", ["true", "", None])
def test_missing_real_data_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci):
    """The ``needs_fmnist`` / ``needs_mnist`` markers: a skip with the install command, but under ``CI=true`` a
    failure, so that CI cannot pass with its real-data tests skipped."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    missing = tmp_path / "train-images-idx3-ubyte.gz"
    outcome = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(outcome, match=r"FashionMNIST not found at .*: apt-get install -y dataset-fashion-mnist"):
        require_data(missing, "FashionMNIST", "apt-get install -y dataset-fashion-mnist")
    missing.write_bytes(b"")
    require_data(missing, "FashionMNIST", "apt-get install -y dataset-fashion-mnist")  # present: runs


@needs_fmnist
def test_short_real_data_run_beats_chance_by_far(tmp_path):
    """A small spiking conv net, 2048 real FashionMNIST images, one epoch: far above the 10 % of chance."""
    from lightning_ep.data import FashionMNISTDataModule

    seed_everything(0)
    data = FashionMNISTDataModule(batch_size=32, val_size=1000, train_subset=2048)
    model = EPLightningModule(network=NetworkConfig(channels=(8, 16), hidden=(64,)), phases=PhasesConfig(t1=15, t2=6),
                              curvature=None, optim=OptimConfig(lr=2e-3))
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0, limit_test_batches=16)
    trainer.fit(model, data)
    acc = trainer.test(model, data, verbose=False)[0]["test/acc"]
    print(f"FashionMNIST, 2048 training images, one epoch: test accuracy {acc:.3f} on 512 test images")
    assert acc > 0.5, f"test accuracy {acc:.3f} after one epoch on 2048 images (chance: 0.10)"
