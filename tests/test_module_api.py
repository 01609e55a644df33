"""EPLightningModule's surface: the configuration groups and their defaults, presets, a per-layer stack or a built
network, optimizer and scheduler factories, checkpoints that load whatever was passed, the Trainer arguments it
refuses, predictions, and the inputs users have (uint8, dicts, unscaled floats)."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import PatternDataModule, needs_fmnist, settings
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lightning_ep import Conv, ConvergentNetwork, Dense
from lightning_ep.config import CurvatureConfig, NetworkConfig, PhasesConfig
from lightning_ep.module import EPLightningModule
from lightning_ep.optimization import OptimConfig

SHAPE, CLASSES = (3, 10, 10), 4
ROOT = Path(__file__).resolve().parents[1]


def trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                    limit_val_batches=0)
    return Trainer(**{**defaults, **kwargs})


def module(network: dict | None = None, **groups) -> EPLightningModule:
    shapes = {"input_shape": SHAPE, "num_classes": CLASSES}
    return EPLightningModule(**settings(network={**shapes, **(network or {})}, **groups))


def parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- defaults and presets ------------------------------------------------------------------------------------
def recipe_model(config: str) -> EPLightningModule:
    from lightning_ep.cli import build_cli
    from lightning_ep.data import FashionMNISTDataModule

    cli = build_cli(FashionMNISTDataModule, ROOT / "recipes" / "configs" / "fmnist_demo.yaml", "test",
                    args=["--config", str(ROOT / "recipes" / "configs" / config), "--trainer.logger=false"])
    return cli.model


def test_the_defaults_are_the_spiking_paper_config():
    default = EPLightningModule()
    assert default.net.spiking and default.network_config.threshold == 0.01
    assert default.curvature == CurvatureConfig(bound=0.9, iters=30)
    assert dict(default.hparams) == dict(recipe_model("fmnist_paper.yaml").hparams)


def test_the_demo_preset_is_the_demo_config():
    demo = EPLightningModule.preset("demo")
    assert demo.curvature is None and demo.phases.start == "feedforward"
    assert dict(demo.hparams) == dict(recipe_model("fmnist_demo.yaml").hparams)
    assert EPLightningModule.preset("paper").hparams == EPLightningModule().hparams
    with pytest.raises(ValueError, match=r"unknown preset 'fast'.*demo"):
        EPLightningModule.preset("fast")


def test_every_setting_has_a_meaning_in_help():
    """LightningCLI's --help shows each group field's one-line meaning from the Google-style Args."""
    import dataclasses

    from lightning_ep.config import BPTTConfig, EPConfig

    for cls in (NetworkConfig, PhasesConfig, EPConfig, BPTTConfig, CurvatureConfig, OptimConfig):
        for f in dataclasses.fields(cls):
            assert f"\n        {f.name}: " in cls.__doc__, f"{cls.__name__}.{f.name} has no meaning in Args:"
    for name in ("network", "phases", "ep", "method", "bptt", "curvature", "optim", "seed"):
        assert f"\n        {name}: " in EPLightningModule.__doc__, name


# -- the network ---------------------------------------------------------------------------------------------
def test_a_per_layer_stack_builds_that_network_and_trains(tmp_path):
    layers = [Conv(4, 3, padding=1, pooling="avg"), Conv(6, 3, pooling="none"), Dense(12)]
    model = EPLightningModule(**settings(network={"input_shape": SHAPE, "num_classes": CLASSES, "layers": layers,
                                                  "channels": (32, 64), "hidden": (256,), "kernel_size": 5,
                                                  "threshold": 0.01}))
    assert [b.out_shape for b in model.net.blocks] == [(4, 5, 5), (6, 3, 3), (12,), (CLASSES,)]
    before = parameters(model)
    trainer(tmp_path, max_steps=2).fit(model, PatternDataModule())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_layers_and_the_2c2fc_shortcut_conflict():
    with pytest.raises(ValueError, match=r"either layers .* or the 2C2FC shortcut"):
        NetworkConfig(layers=[Dense(8)], hidden=(16,))


def test_a_built_network_is_trained_recorded_and_rebuilt_on_load(tmp_path):
    net = ConvergentNetwork(SHAPE, [Conv(4, 3), Dense(16)], CLASSES, loss="ce", threshold=0.01,
                            label_smoothing=0.1)
    model = EPLightningModule.from_network(net, phases=PhasesConfig(t1=10, t2=4), curvature=None)
    assert model.net is net
    assert model.hparams["network"]["threshold"] == 0.01 and model.hparams["network"]["loss"] == "ce"
    assert model.hparams["network"]["label_smoothing"] == 0.1
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, PatternDataModule())
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded = EPLightningModule.load_from_checkpoint(tmp_path / "m.ckpt")  # no network= needed
    assert loaded.net.spiking and loaded.net.readout is not None and loaded.net.label_smoothing == 0.1
    for a, b in zip(loaded.net.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="from_network"):
        EPLightningModule(network=net)
    with pytest.raises(TypeError, match="drop network="):
        EPLightningModule.from_network(net, network=NetworkConfig())


# -- optimisation --------------------------------------------------------------------------------------------
def test_optimizer_and_scheduler_factories(tmp_path):
    model = module(optim=dict(optimizer=partial(torch.optim.SGD, lr=0.05), lr=None, layer_lrs=[0.1, 0.2, 0.3],
                              scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                              scheduler_interval="epoch"))
    data = PatternDataModule(n=64)  # 2 batches an epoch
    trainer(tmp_path, max_epochs=2).fit(model, data)
    opt = model.optimizers().optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 / 4, 0.2 / 4, 0.3 / 4])  # halved each epoch
    model = module(optim=dict(optimizer=partial(torch.optim.SGD, lr=0.05), lr=None, scheduler="none"))
    trainer(tmp_path, max_steps=1).fit(model, data)
    assert [g["lr"] for g in model.optimizers().optimizer.param_groups] == [0.05] * 3  # the factory's own rate


def test_named_optimizer_and_cosine_per_step(tmp_path):
    model = module(optim=dict(optimizer="sgd", lr=0.1, momentum=0.5))
    trainer(tmp_path, max_epochs=1).fit(model, PatternDataModule(n=64))
    opt = model.optimizers().optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 over the 2 steps


@pytest.mark.parametrize("optim, match", [
    (dict(optimizer="lbfgsx"), "not the import path of a torch.optim.optimizer.Optimizer"),
    (dict(optimizer="torch.optim.lr_scheduler.StepLR"), "not the import path"),
    (dict(scheduler="step"), "not the import path of a torch.optim.lr_scheduler.LRScheduler"),
    (dict(scheduler_interval="batch"), "scheduler_interval"),
    (dict(optimizer=partial(torch.optim.AdamW, lr=1e-3), lr=5e-3), "lr is given twice"),
    (dict(optimizer=partial(torch.optim.AdamW, weight_decay=0.1), weight_decay=0.2), "weight_decay is given twice"),
    (dict(optimizer="adam", momentum=0.5), "momentum applies to optimizer='sgd' only"),
    (dict(optimizer=lambda params: torch.optim.SGD(params, lr=0.1)), "a checkpoint could not record it"),
    (dict(scheduler="none", scheduler_args={"step_size": 2}), "scheduler_args apply to a scheduler class"),
    (dict(accumulate_grad_batches=0), "accumulate_grad_batches"),
    (dict(layer_lrs=[1e-3]), None),
])
def test_bad_optimisation_arguments_raise(tmp_path, optim, match):
    if match is None:  # a wrong number of layer rates is found when the optimizer is built
        with pytest.raises(ValueError, match="layer_lrs needs one learning rate per block"):
            trainer(tmp_path, max_steps=1).fit(module(optim=optim), PatternDataModule())
        return
    with pytest.raises(ValueError, match=match):
        module(optim=optim)


def test_an_unbounded_run_refuses_cosine_and_trains_without_a_schedule():
    """max_epochs=-1 and no max_steps: Lightning estimates infinite steps; cosine cannot anneal over them."""
    from types import SimpleNamespace

    unbounded = SimpleNamespace(estimated_stepping_batches=float("inf"), max_epochs=-1)
    groups = [[torch.nn.Parameter(torch.zeros(2))]]
    for interval in ("step", "epoch"):
        with pytest.raises(ValueError, match=f"anneals over the run's {interval}s.*set --trainer.max_epochs"):
            OptimConfig(scheduler_interval=interval).lightning_config(groups, unbounded)
    assert isinstance(OptimConfig(scheduler="none").lightning_config(groups, unbounded), torch.optim.Optimizer)


def test_reduce_on_plateau_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="monitored metric"):
        module(optim={"scheduler": partial(torch.optim.lr_scheduler.ReduceLROnPlateau)})


@pytest.mark.parametrize("trainer_kwargs, argument", [
    (dict(gradient_clip_val=0.5), "optim=OptimConfig(gradient_clip_val=0.5)"),
    (dict(accumulate_grad_batches=2), "optim=OptimConfig(accumulate_grad_batches=2)"),
])
def test_trainer_clipping_and_accumulation_name_the_module_argument(tmp_path, trainer_kwargs, argument):
    with pytest.raises(ValueError, match=argument.replace("(", r"\(").replace(")", r"\)")):
        trainer(tmp_path, max_steps=1, **trainer_kwargs).fit(module(), PatternDataModule())


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    """EP's estimate is a mean over the batch and the phases run per sample: two accumulated batches of 16 give
    the step of one batch of 32 (plain SGD, so the step is the gradient)."""
    full = PatternDataModule(n=32, batch_size=32)
    half = PatternDataModule(n=32, batch_size=16)
    params = []
    for data, k in ((full, 1), (half, 2)):
        seed_everything(0)
        model = module(network={"threshold": 0.01}, optim=dict(optimizer="sgd", momentum=0.0, lr=0.1,
                                                              scheduler="none", accumulate_grad_batches=k))
        trainer(tmp_path, max_epochs=1).fit(model, data)
        assert model.trainer.global_step == 1  # one optimizer step either way
        params.append(parameters(model))
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- checkpoints ---------------------------------------------------------------------------------------------
FACTORIES = {
    "name": dict(optimizer="adamw", weight_decay=0.01),
    "path": dict(optimizer="torch.optim.RAdam", optimizer_args={"betas": [0.8, 0.99]}),
    "class": dict(optimizer=torch.optim.AdamW),
    "partial": dict(optimizer=partial(torch.optim.AdamW, lr=2e-3, betas=(0.8, 0.99)), lr=None,
                    scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1)),
}


@pytest.mark.parametrize("kind", FACTORIES)
def test_every_checkpoint_loads_with_lightning_defaults(tmp_path, kind):
    """load_from_checkpoint, Trainer.fit(ckpt_path=...) and Trainer.test(ckpt_path=...), each with Lightning's
    default (weights-only) loading, whatever optimizer configuration was passed."""
    data = PatternDataModule(n=64)
    model = module(network={"threshold": 0.01}, optim=FACTORIES[kind])
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, data)
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["network"]["threshold"] == 0.01
    loaded = EPLightningModule.load_from_checkpoint(path)
    assert loaded.optim == model.optim and loaded.hparams == model.hparams
    for a, b in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    resumed = trainer(tmp_path, max_steps=2)
    resumed.fit(module(network={"threshold": 0.01}, optim=FACTORIES[kind]), data, ckpt_path=path)
    assert resumed.global_step == 2
    assert trainer(tmp_path).test(loaded, data, ckpt_path=str(path), verbose=False)[0]["test/acc"] >= 0


@needs_fmnist
def test_a_recipe_checkpoint_with_optimizer_and_scheduler_classes_loads(tmp_path, monkeypatch):
    """A LightningCLI run of the per-layer config, which names AdamW and a one-cycle schedule by their classes:
    its checkpoint loads with Lightning's defaults, into the module it trained."""
    from lightning_ep.cli import build_cli
    from lightning_ep.data import FashionMNISTDataModule

    monkeypatch.chdir(tmp_path)
    configs = ROOT / "recipes" / "configs"
    cli = build_cli(FashionMNISTDataModule, configs / "fmnist_demo.yaml", "test", args=[
        "--config", str(configs / "fmnist_layers.yaml"), "--trainer.logger=false", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--data.train_subset=128",
        "--model.optim.scheduler_args", '{"max_lr": 0.002, "total_steps": 2}'])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert isinstance(cli.model.optimizers().optimizer, torch.optim.AdamW)
    cli.trainer.save_checkpoint(tmp_path / "recipe.ckpt")
    loaded = EPLightningModule.load_from_checkpoint(tmp_path / "recipe.ckpt")
    assert loaded.optim.scheduler == "torch.optim.lr_scheduler.OneCycleLR" and loaded.network_config.layers
    for a, b in zip(loaded.parameters(), cli.model.parameters(), strict=True):
        assert torch.equal(a, b)


# -- Lightning integration -----------------------------------------------------------------------------------
def test_no_override_warning_for_callbacks_the_user_never_passed(tmp_path):
    data = PatternDataModule(n=64)
    model = module()
    t = trainer(tmp_path, max_steps=1, limit_val_batches=1)
    t.fit(model, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.validate(model, data, verbose=False)
        t.test(model, data, verbose=False)
        t.predict(model, data.test_dataloader())
    assert not [w for w in caught if "configure_callbacks" in str(w.message)], [str(w.message) for w in caught]
    names = [type(c).__name__ for c in t.callbacks]
    assert names.count("MidEpochResume") == 1 and names.count("DestroyProcessGroupAtExit") == 1


def test_predict_gives_classes_logits_or_probabilities(tmp_path):
    data = PatternDataModule(n=64)
    model = module()
    trainer(tmp_path, max_steps=2).fit(model, data)
    x = data.data.tensors[0][:40]
    loader = DataLoader(TensorDataset(x), batch_size=16)
    classes = torch.cat(trainer(tmp_path).predict(model, loader))
    model.predict_output = "logits"
    logits = torch.cat(trainer(tmp_path).predict(model, loader))
    model.predict_output = "probabilities"
    probabilities = torch.cat(trainer(tmp_path).predict(model, loader))
    assert logits.shape == probabilities.shape == (40, CLASSES)
    torch.testing.assert_close(logits, model(x))
    assert torch.equal(classes, logits.argmax(1))
    torch.testing.assert_close(probabilities, torch.softmax(logits, 1))
    model.predict_output = "labels"
    with pytest.raises(ValueError, match="unknown predict_output 'labels'"):
        trainer(tmp_path).predict(model, loader)


def test_eval_hflip_averages_each_image_with_its_mirror(tmp_path):
    data = PatternDataModule(n=64)
    model = module(eval_hflip=True)
    trainer(tmp_path, max_steps=2).fit(model, data)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, *SHAPE, generator=g), torch.randint(0, CLASSES, (40,), generator=g)
    averaged = (model(x) + model(x.flip(-1))) / 2  # the oracle: each image and its mirror in passes of their own
    assert not torch.allclose(averaged, model(x), atol=1e-3)  # the mirrors change the outputs: the test can fail
    model.predict_output = "logits"
    logits = torch.cat(trainer(tmp_path).predict(model, DataLoader(TensorDataset(x), batch_size=16)))
    torch.testing.assert_close(logits, averaged)
    tested = trainer(tmp_path).test(model, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    assert tested[0]["test/acc"] == pytest.approx((averaged.argmax(1) == y).float().mean().item())
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    t.fit(module(eval_hflip=True), data)
    t.save_checkpoint(tmp_path / "flip.ckpt")
    assert EPLightningModule.load_from_checkpoint(tmp_path / "flip.ckpt").eval_hflip is True
    with pytest.raises(TypeError, match="eval_hflip must be True or False"):
        module(eval_hflip="yes")
    with pytest.raises(ValueError, match=r"needs \(B, C, H, W\) images"):
        model.predict_step(torch.rand(4, 300), 0)


# -- inputs --------------------------------------------------------------------------------------------------
def _one_step(tmp_path, images: torch.Tensor, labels: torch.Tensor, collate=None) -> list[torch.Tensor]:
    seed_everything(0)
    model = module()
    loader = DataLoader(TensorDataset(images, labels), batch_size=32, collate_fn=collate)
    trainer(tmp_path, max_steps=1).fit(model, loader)
    return parameters(model)


def test_uint8_and_dict_batches_train_as_float_tuples(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (32, *SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (32,), generator=g)
    want = _one_step(tmp_path, pixels.float() / 255, labels)
    got_uint8 = _one_step(tmp_path, pixels, labels)

    def as_dict(samples):
        x, y = torch.utils.data.default_collate(samples)
        return {"image": x, "label": y}

    got_dict = _one_step(tmp_path, pixels, labels, collate=as_dict)
    assert not torch.equal(want[0], parameters(module())[0])  # the step moved the weights
    for a, b, c in zip(want, got_uint8, got_dict, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.parametrize("batch, match", [
    ({"pixels": torch.zeros(2, *SHAPE), "label": torch.zeros(2, dtype=torch.long)}, "one of the keys .*'image'"),
    ((torch.full((2, *SHAPE), 255.0), torch.zeros(2, dtype=torch.long)), "divide raw pixels by 255"),
    ((torch.zeros(2, *SHAPE, dtype=torch.int32), torch.zeros(2, dtype=torch.long)), "x.float\\(\\) / 255"),
    ((torch.zeros(2, *SHAPE),), "must be \\(images, labels\\)"),
])
def test_inputs_a_user_has_get_an_error_that_names_the_fix(batch, match):
    model = module()
    with pytest.raises(ValueError, match=match):
        model.validation_step(batch, 0)
