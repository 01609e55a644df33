"""A DDP process ends with its gloo process group destroyed by an exit handler (not left to finalization, where gloo's
threads can abort the rank with SIGABRT): checked in a fresh interpreter, whose exit handlers really run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A one-process DDP fit (strategy="ddp" sets up a gloo group even for one device). An exit handler registered before
# the fit runs after every handler the fit registers (last in, first out) and reports whether the group is still up.
SCRIPT = """
import atexit, sys
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
atexit.register(lambda: print("group up at exit:", torch.distributed.is_initialized(), flush=True))
which, extra = sys.argv[1], sys.argv[2:]
if which == "ep":
    from lightning_ep import EPLightningModule
    module = EPLightningModule(network={"input_shape": (1, 8, 8), "num_classes": 2, "channels": [2], "kernel_size": 3,
                                        "hidden": [4]}, phases={"t1": 4, "t2": 2}, curvature=None,
                               optim={"scheduler": "none"})
else:
    from lightning_ep.baselines import SnnTorchCSNN
    module = SnnTorchCSNN(input_shape=(1, 8, 8), num_classes=2, channels=[2], kernel_size=3, hidden=[4],
                          num_steps=3, optim={"scheduler": "none"})
x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8,))
if extra == ["plain"]:  # no module callbacks, so no exit handler: what the group does unaided
    module.configure_callbacks = lambda: []
trainer = Trainer(accelerator="cpu", devices=1, strategy="ddp", max_steps=2, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
print("fit done, group up:", torch.distributed.is_initialized(), flush=True)
"""


def run(which: str, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free one
    out = subprocess.run([sys.executable, "-c", SCRIPT, which, *extra], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("which", ["ep", "csnn"])
def test_ddp_process_group_is_destroyed_at_exit(which):
    lines = run(which).splitlines()
    assert "fit done, group up: True" in lines  # the fit used a process group ...
    assert lines[-1] == "group up at exit: False"  # ... and it was destroyed before the interpreter's finalization


def test_without_the_handler_the_group_outlives_the_exit_handlers():
    """The control: the same fit without ``DestroyProcessGroupAtExit`` leaves the group up to finalization."""
    assert run("ep", "plain").splitlines()[-1] == "group up at exit: True"
