"""The recipes: LightningCLI flags and configs, W&B offline logging read back, 2-process DDP, sweep configs."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PatternDataModule, needs_fmnist, settings
from helpers.wandb_offline import read_records, run_file
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_ep import cli as cli_module
from lightning_ep.cli import fit_and_test, run_recipe
from lightning_ep.data import FashionMNISTDataModule
from lightning_ep.module import EPLightningModule

ROOT = Path(__file__).resolve().parents[1]
# A tiny network and a short run, so that a recipe finishes in seconds.
SMALL = ["--model.network.channels=[4, 8]", "--model.network.hidden=[16]", "--model.phases.t1=8",
         "--model.phases.t2=4", "--data.train_subset=256",
         "--data.val_size=64", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2",
         "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"]


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


def _recipe(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "recipes" / "fmnist.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_print_config_shows_every_group(tmp_path):
    out = _recipe(["--print_config", "--model.ep.beta=0.25", "--model.phases.t1", "12"], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["ep"]["beta"] == 0.25 and config["model"]["phases"]["t1"] == 12
    assert {"trainer", "model", "data"} <= set(config)
    assert config["model"]["network"]["threshold"] > 0  # the demo config trains the spiking network
    assert set(config["model"]) == {"network", "phases", "ep", "method", "bptt", "curvature", "optim", "seed",
                                     "eval_hflip"}


def test_help_gives_every_model_flag_a_meaning(tmp_path):
    out = _recipe(["--help"], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.split())
    for flag, meaning in (("--model.phases.t1", "steps of the free phase in training"),
                          ("--model.network.graded", "a neuron may send several spikes a step"),
                          ("--model.network.label_smoothing", "share of the target spread evenly"),
                          ("--model.phases.update", "descent of the energy"),
                          ("--model.phases.tol", "stop a phase early"),
                          ("--model.ep.average_last", "averaged over the last"),
                          ("--model.curvature.help", "CurvatureConfig")):
        assert flag in text and meaning in text.rsplit(flag, 1)[1][:400], (flag, meaning)  # past the usage


@needs_fmnist
def test_recipe_logs_to_wandb_offline(tmp_path, monkeypatch):
    import wandb

    wandb.teardown()  # start from wandb's defaults, whatever ran before in this process
    monkeypatch.chdir(tmp_path)
    clis = []  # the recipe's LightningCLI, kept to recompute its test accuracy

    def keep_cli(cli: LightningCLI) -> dict[str, float]:
        clis.append(cli)
        return fit_and_test(cli)

    monkeypatch.setattr(cli_module, "fit_and_test", keep_cli)
    metrics = run_recipe(FashionMNISTDataModule, ROOT / "recipes" / "configs" / "fmnist_demo.yaml", "test",
                         args=[*SMALL, "--trainer.max_steps=4", "--trainer.log_every_n_steps=1", "--model.ep.beta=0.3"])
    (cli,) = clis
    batches = list(islice(cli.datamodule.test_dataloader(), 2))  # --trainer.limit_test_batches=2
    with torch.no_grad():
        correct = sum(int((cli.model(x).argmax(1) == y).sum()) for x, y in batches)
    assert metrics["test/acc"] == pytest.approx(correct / sum(len(y) for _, y in batches))
    records = read_records(run_file(tmp_path / "runs"))
    logged = {k for row in records["history"] for k in row}
    assert {"train/loss_step", "train/acc_step", "train/change_free_step", "train/spike_rate_layer1_step"} <= logged
    steps = [row["train/loss_step"] for row in records["history"] if "train/loss_step" in row]
    assert len(steps) == 4 and all(0 < v < 1 for v in steps)
    assert records["config"]["ep"]["beta"] == 0.3 and records["config"]["phases"]["t1"] == 8
    assert records["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])


def test_ddp_spawn_keeps_ranks_identical(tmp_path, patterns):
    from helpers.sync_check import AssertParametersEqual

    shapes = {"input_shape": patterns.input_shape, "num_classes": patterns.num_classes}
    model = EPLightningModule(**settings(network=shapes))
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=3, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      callbacks=[AssertParametersEqual(str(tmp_path / "sync"))])
    trainer.fit(model, PatternDataModule())
    reports = sorted((tmp_path / "sync").glob("rank*-of-2-*.txt"))
    assert len(reports) == 2, reports
    texts = [r.read_text() for r in reports]
    assert all(t.startswith("equal steps=3") for t in texts), texts
    assert texts[0].split("norm=")[1] == texts[1].split("norm=")[1]
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(before, after), "ddp_spawn should copy the trained weights back"


@needs_fmnist
def test_recipe_on_two_devices(tmp_path):
    out = _recipe([*SMALL, "--data.train_subset=512", "--trainer.devices=2", "--trainer.max_steps=3",
                   "--trainer.logger=false", "--trainer.callbacks+=helpers.sync_check.AssertParametersEqual",
                   f"--trainer.callbacks.out_dir={tmp_path / 'sync'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    texts = [p.read_text() for p in sorted((tmp_path / "sync").glob("rank*-of-2-*.txt"))]
    assert len(texts) == 2 and all(t.startswith("equal steps=3") for t in texts), texts
    assert "test accuracy:" in out.stdout


SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))


def _render(config: dict, run_config: dict) -> list[str]:
    """The command the W&B agent runs for a proposed run (wandb's own helpers, as wandb_agent uses them)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": run_config})
    sweep_vars |= {"interpreter": [sys.executable], "program": [str(ROOT / config["program"])],
                   "env": ["/usr/bin/env"]}
    command: list[str] = []
    for chunk in sweep_utils.create_sweep_command(list(config["command"])):
        command += sweep_vars[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_config_is_valid_and_proposes_cli_commands(path):
    import sweeps

    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    runs: list = []
    for _ in range(3):
        run = sweeps.next_run(config, runs, validate=True)
        assert run is not None
        runs.append(run)
        command = _render(config, run.config)
        flags = [c for c in command if c.startswith("--")]
        assert sorted(f.split("=")[0][2:] for f in flags) == sorted(config["parameters"])
        assert all(f.startswith("--model.") and "=" in f for f in flags)
        run.state = sweeps.RunState.finished
        run.summary_metrics = {"val/acc": 0.5}


@needs_fmnist
def test_a_proposed_sweep_run_trains(tmp_path):
    import sweeps

    config = yaml.safe_load((ROOT / "recipes" / "sweeps" / "fmnist_search.yaml").read_text())
    command = _render(config, sweeps.next_run(config, []).config)
    out = subprocess.run([*command, *SMALL, "--trainer.max_steps=2"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy:" in out.stdout
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes" / "configs").glob("*.yaml")))
def test_every_config_parses_and_trains_a_step(config, tmp_path, monkeypatch, request):
    from lightning_ep.baselines import SnnTorchCSNN
    from lightning_ep.cli import build_cli
    from lightning_ep.data import MNISTDataModule

    mnist = config.startswith("mnist")
    request.getfixturevalue("mnist_installed" if mnist else "fashion_mnist_installed")  # skip, or fail under CI
    datamodule = MNISTDataModule if mnist else FashionMNISTDataModule
    model_class = SnnTorchCSNN if "_csnn_" in config else EPLightningModule
    monkeypatch.chdir(tmp_path)
    cli = build_cli(datamodule, ROOT / "recipes" / "configs" / config, "test", args=[
        "--trainer.logger=false", "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--data.train_subset=128", "--data.val_size=64"],
        model_class=model_class)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


@needs_fmnist
def test_recipe_with_neuromorphic_callbacks_logs_counts_and_raster(tmp_path, monkeypatch):
    """The FashionMNIST recipe with ``NeuromorphicCostMonitor`` and ``ActivationDiagnostics`` added on the command
    line logs the SynOps / spike counts (train and test) and the spike raster image to W&B (offline, read back)."""
    import wandb

    wandb.teardown()
    monkeypatch.chdir(tmp_path)
    callbacks = ["--trainer.callbacks+=lightning_ep.callbacks.NeuromorphicCostMonitor",
                 "--trainer.callbacks.every_n_steps=2", "--trainer.callbacks.traced_samples=8",
                 "--trainer.callbacks+=lightning_ep.callbacks.ActivationDiagnostics",
                 "--trainer.callbacks.every_n_steps=2"]
    run_recipe(FashionMNISTDataModule, ROOT / "recipes" / "configs" / "fmnist_demo.yaml", "test",
               args=[*SMALL, "--trainer.max_steps=3", "--trainer.log_every_n_steps=1", *callbacks])
    records = read_records(run_file(tmp_path / "runs"))
    logged = {k for row in records["history"] for k in row} | set(records["summary"])
    assert {"train/cost/synops", "train/cost/spikes", "train/cost/dense_macs", "train/cost/latency",
            "train/cost/synops_free", "test/cost/synops", "test/cost/latency"} <= logged, sorted(logged)
    synops = [row["train/cost/synops"] for row in records["history"] if "train/cost/synops" in row]
    assert synops and all(v > 0 for v in synops)
    assert any(k.startswith("activations/raster") for k in logged), "the spike raster was not logged"
    rasters = list((tmp_path / "runs").rglob("media/images/activations/raster*.png"))
    assert rasters, "no raster image was written by the W&B run"


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested groups as dotted keys (a group set to null counts as one setting)."""
    flat = {}
    for key, value in settings.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


# the configs that reproduce recorded runs
RESULT_CONFIGS = ("_paper.yaml", "_feedforward.yaml", "_hidden512.yaml", "_best.yaml")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes" / "configs").glob("*.yaml")
                                          if p.name.endswith(RESULT_CONFIGS)))
def test_result_configs_state_every_setting_of_the_demo_config(config):
    """The paper, feed-forward, hidden-512 and beyond-paper configs are read over their recipe's demo config
    (``--config`` on top of the recipe's default). Every model setting the demo config makes must be stated in them,
    or a later change of the demo (as its move to the feed-forward start and omega 1.3 did) silently changes the runs
    they reproduce."""
    recipe = config.rsplit("_", 1)[0]  # fmnist_paper.yaml: fmnist; fmnist_csnn_best.yaml: fmnist_csnn
    demo = _flat(yaml.safe_load((ROOT / "recipes" / "configs" / f"{recipe}_demo.yaml").read_text())["model"])
    full = _flat(yaml.safe_load((ROOT / "recipes" / "configs" / config).read_text())["model"])
    inherited = sorted(k for k in demo if k not in full and not any(f.startswith(k + ".") for f in full))
    assert not inherited, f"{config} inherits {inherited} from {recipe}_demo.yaml"
