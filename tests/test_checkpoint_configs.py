"""The recipe configs' checkpointing: ``last.ckpt`` is the latest state (what ``--ckpt_path`` resumes from), even
when the monitored metric stops improving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import PatternDataModule, settings
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ep.module import EPLightningModule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
WITH_CHECKPOINTS = [p for p in CONFIGS if "ModelCheckpoint" in p.read_text()]


class FlatValidation(EPLightningModule):
    """Logs the same validation accuracy every epoch: a monitor of it never improves after the first."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/acc", 0.5, batch_size=len(batch[1]))


def checkpoint_callbacks(config: Path) -> list[ModelCheckpoint]:
    specs = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    found = [ModelCheckpoint(**s.get("init_args", {})) for s in specs if s["class_path"].endswith("ModelCheckpoint")]
    assert found, f"{config.name} has no ModelCheckpoint"
    return found


def test_some_configs_checkpoint():
    assert WITH_CHECKPOINTS


@pytest.mark.parametrize("config", WITH_CHECKPOINTS, ids=lambda p: p.name)
def test_last_checkpoint_is_the_latest_state(config, tmp_path):
    callbacks = checkpoint_callbacks(config)
    for cb in callbacks:
        cb.dirpath = tmp_path
    data = PatternDataModule(n=64)
    shapes = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    model = FlatValidation(**settings(network=shapes, phases={"t1": 4, "t2": 2}))
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(model, data)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, trainer.global_step)
    for name, value in model.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name
