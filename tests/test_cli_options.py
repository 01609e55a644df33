"""The recipes' own options: ``--checkpoint_every_n_steps`` (last.ckpt every N steps, taken over from the configs'
ModelCheckpoint) and the refusal of LightningCLI's ``--optimizer`` / ``--lr_scheduler``, which would replace or be
ignored by the modules' own optimizer setup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import needs_fmnist
from lightning.pytorch import Trainer
from test_recipes import ROOT, SMALL, _recipe

from lightning_ep.cli import PeriodicLastCheckpoint, build_cli
from lightning_ep.data import FashionMNISTDataModule

DEMO = ROOT / "recipes" / "configs" / "fmnist_demo.yaml"
MODEL_FLAGS = ("--model.optim.optimizer", "--model.optim.lr", "--model.optim.weight_decay", "--model.optim.scheduler")


def _refused(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """The parser's error message for ``args`` (and that it exits with status 2)."""
    with pytest.raises(SystemExit) as exit_:
        build_cli(FashionMNISTDataModule, DEMO, "test", args=args)
    assert exit_.value.code == 2
    return " ".join(capsys.readouterr().err.split())


@needs_fmnist
def test_recipe_refuses_the_top_level_optimizer_naming_the_model_flags(tmp_path):
    out = _recipe([*SMALL, "--trainer.max_steps=1", "--trainer.logger=false", "--optimizer", "AdamW"], tmp_path,
                  timeout=120)
    message = " ".join(out.stderr.split())
    assert out.returncode != 0, "--optimizer AdamW was accepted"
    assert "LightningCLI's --optimizer would replace the model's optimizer" in message, out.stderr[-2000:]
    assert all(flag in message for flag in MODEL_FLAGS), message[-1000:]
    assert "test accuracy:" not in out.stdout


def test_lr_scheduler_is_refused_on_the_command_line_and_in_a_config(tmp_path, capsys):
    message = _refused(capsys, ["--lr_scheduler", "StepLR"])
    assert "LightningCLI's --lr_scheduler would be ignored" in message and "--model.optim.scheduler" in message
    config = tmp_path / "c.yaml"
    config.write_text("optimizer:\n  class_path: torch.optim.AdamW\n  init_args: {lr: 0.01}\n")
    message = _refused(capsys, ["--config", str(config)])
    assert "LightningCLI's --optimizer would replace" in message and "--model.optim.lr" in message


def test_configs_saved_with_null_optimizer_still_load(tmp_path, monkeypatch):
    """Runs before the refusal saved ``optimizer: null`` and ``lr_scheduler: null`` in their config.yaml."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "saved.yaml"
    config.write_text("optimizer: null\nlr_scheduler: null\n")
    cli = build_cli(FashionMNISTDataModule, DEMO, "test", args=["--config", str(config), "--trainer.logger=false"])
    assert cli.config["optimizer"] is None and cli.config["lr_scheduler"] is None


def test_device_flags_still_parse(tmp_path):
    out = _recipe(["--print_config", "--trainer.devices", "2", "--trainer.num_nodes=2", "--trainer.strategy=ddp",
                   "--checkpoint_every_n_steps", "50"], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    config = yaml.safe_load(out.stdout)
    assert str(config["trainer"]["devices"]) == "2" and config["trainer"]["num_nodes"] == 2
    assert config["checkpoint_every_n_steps"] == 50 and config["optimizer"] is None


def test_checkpoint_every_n_steps_needs_checkpointing(capsys):
    message = _refused(capsys, ["--checkpoint_every_n_steps", "5", "--trainer.enable_checkpointing=false"])
    assert "--checkpoint_every_n_steps 5 writes checkpoints, but checkpointing is off" in message
    assert "drop --trainer.enable_checkpointing=false" in message
    _refused(capsys, ["--checkpoint_every_n_steps", "0"])


@needs_fmnist
def test_checkpoint_every_n_steps_takes_over_last_ckpt_from_the_paper_config(tmp_path, monkeypatch, recwarn):
    """The paper config keeps the latest state in last.ckpt with a ModelCheckpoint of its own: with the flag, one
    last.ckpt (no last-v1.ckpt), written every N steps and at the end of the epoch, beside the config's other
    checkpoints (the best epoch by val/acc, the top-1 epoch); without Lightning's warning that a checkpoint written
    every N steps under manual optimization holds the state after the optimizer step (the state to resume from)."""
    monkeypatch.chdir(tmp_path)
    cli = build_cli(FashionMNISTDataModule, DEMO, "test", args=[
        "--config", str(ROOT / "recipes" / "configs" / "fmnist_paper.yaml"), *SMALL, "--trainer.logger=false",
        "--trainer.enable_checkpointing=true", "--trainer.max_epochs=1", "--checkpoint_every_n_steps=3"])
    periodic = [c for c in cli.trainer.checkpoint_callbacks if isinstance(c, PeriodicLastCheckpoint)]
    assert len(periodic) == 1 and periodic[0].every_n_steps == 3
    assert [c.save_last for c in cli.trainer.checkpoint_callbacks] == [None, False, True]

    saved: list[int] = []
    monkeypatch.setattr(cli.trainer, "save_checkpoint", _recording(cli.trainer.save_checkpoint, cli.trainer, saved))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.num_training_batches == 4 and cli.trainer.global_step == 4
    files = sorted(p.name for p in (tmp_path / "runs" / "checkpoints").iterdir())
    assert "last.ckpt" in files and not [f for f in files if f.startswith("last-")], files
    assert any(f.startswith("best-epoch0") for f in files) and "epoch=0-step=4.ckpt" in files, files
    assert torch.load(tmp_path / "runs" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert 3 in saved, "last.ckpt was not written at step 3"
    assert not [w for w in recwarn if "ModelCheckpoint with manual optimization" in str(w.message)]


def _recording(save: Callable[..., Any], trainer: Trainer, steps: list[int]) -> Callable[..., Any]:
    """``trainer.save_checkpoint`` that also records the global step of each last.ckpt it writes."""

    def wrapped(filepath: str | Path, *args: Any, **kwargs: Any) -> Any:
        if str(filepath).endswith("last.ckpt"):
            steps.append(trainer.global_step)
        return save(filepath, *args, **kwargs)

    return wrapped
