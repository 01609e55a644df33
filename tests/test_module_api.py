"""EPLightningModule's network and optimisation arguments: a per-layer stack or a built network, optimizer and
scheduler factories (as LightningCLI injects them), gradient accumulation, and the Trainer arguments it refuses."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import TINY, PatternDataModule
from lightning.pytorch import Trainer, seed_everything

from lightning_ep import Conv, ConvergentNetwork, Dense
from lightning_ep.module import EPLightningModule

SHAPE, CLASSES = (3, 10, 10), 4


def trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                    limit_val_batches=0)
    return Trainer(**{**defaults, **kwargs})


def module(**kwargs) -> EPLightningModule:
    return EPLightningModule(input_shape=SHAPE, num_classes=CLASSES, **{**TINY, **kwargs})


def test_a_per_layer_stack_builds_that_network_and_trains(tmp_path):
    layers = [Conv(4, 3, padding=1, pooling="avg"), Conv(6, 3, pooling="none"), Dense(12)]
    model = module(layers=layers, threshold=0.01)
    shapes = [b.out_shape for b in model.net.blocks]
    assert shapes == [(4, 5, 5), (6, 3, 3), (12,), (CLASSES,)]
    before = [p.detach().clone() for p in model.parameters()]
    trainer(tmp_path, max_steps=2).fit(model, PatternDataModule())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_built_network_is_used_as_is_and_is_not_a_hyperparameter(tmp_path):
    net = ConvergentNetwork(SHAPE, [Conv(4, 3), Dense(16)], CLASSES, loss="ce", threshold=0.01)
    model = EPLightningModule(network=net, t1=10, t2=4)
    assert model.net is net and "network" not in model.hparams
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    t.fit(model, PatternDataModule())
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    fresh = ConvergentNetwork(SHAPE, [Conv(4, 3), Dense(16)], CLASSES, loss="ce", threshold=0.01)
    loaded = EPLightningModule.load_from_checkpoint(path, network=fresh)
    for a, b in zip(loaded.net.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_and_scheduler_factories(tmp_path):
    model = module(optimizer=partial(torch.optim.SGD, lr=0.05), layer_lrs=[0.1, 0.2, 0.3],
                   scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                   scheduler_interval="epoch")
    data = PatternDataModule(n=64)  # 2 batches an epoch
    trainer(tmp_path, max_epochs=2).fit(model, data)
    opt = model.optimizers().optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 / 4, 0.2 / 4, 0.3 / 4])  # halved each epoch
    model = module(optimizer=partial(torch.optim.SGD, lr=0.05), scheduler="none")
    trainer(tmp_path, max_steps=1).fit(model, data)
    assert [g["lr"] for g in model.optimizers().optimizer.param_groups] == [0.05] * 3  # the factory's own rate


def test_named_optimizer_and_cosine_per_step(tmp_path):
    model = module(optimizer="sgd", lr=0.1, momentum=0.5)
    trainer(tmp_path, max_epochs=1).fit(model, PatternDataModule(n=64))
    opt = model.optimizers().optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 over the 2 steps


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="adamw"), "unknown optimizer"),
    (dict(optimizer={"class_path": "torch.optim.SGD"}), "unknown optimizer"),
    (dict(scheduler="step"), "unknown scheduler"),
    (dict(scheduler_interval="batch"), "scheduler_interval"),
    (dict(optimizer=torch.optim.AdamW, weight_decay=0.1), "give them to the factory"),
    (dict(accumulate_grad_batches=0), "accumulate_grad_batches"),
])
def test_bad_optimisation_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        module(**kwargs)


def test_reduce_on_plateau_is_refused_with_the_reason(tmp_path):
    model = module(scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau))
    with pytest.raises(ValueError, match="monitored metric"):
        trainer(tmp_path, max_steps=1).fit(model, PatternDataModule())


@pytest.mark.parametrize("trainer_kwargs, argument", [
    (dict(gradient_clip_val=0.5), "EPLightningModule(gradient_clip_val=0.5)"),
    (dict(accumulate_grad_batches=2), "EPLightningModule(accumulate_grad_batches=2)"),
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
        model = module(optimizer="sgd", momentum=0.0, lr=0.1, scheduler="none", accumulate_grad_batches=k,
                       threshold=0.01)
        trainer(tmp_path, max_epochs=1).fit(model, data)
        assert model.trainer.global_step == 1  # one optimizer step either way
        params.append([p.detach() for p in model.parameters()])
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
