"""``--checkpoint_every_n_steps``: the recipe writes last.ckpt every N steps; a training process killed with SIGKILL
in the middle of an epoch and resumed from that last.ckpt with ``--ckpt_path`` ends with the parameters of an
uninterrupted run, after training on the same batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import needs_fmnist
from test_recipes import ROOT, SMALL, _env

EVERY = 4  # --checkpoint_every_n_steps
HOLD = 22  # killed after step 22: last.ckpt holds step 20, steps 21 and 22 are lost and trained again
# 256 samples in batches of 16: 16 steps an epoch, 32 in all; the kill falls in epoch 1 (its sampler epoch matters).
RUN = [*SMALL, "--data.batch_size=16", "--trainer.max_epochs=2", "--trainer.max_steps=-1", "--trainer.logger=false",
       "--trainer.enable_checkpointing=true", f"--checkpoint_every_n_steps={EVERY}", "--trainer.limit_test_batches=1"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "recipes" / "fmnist.py"), *RUN, *args,
           "--trainer.callbacks+=helpers.training_trace.TrainingTrace", f"--trainer.callbacks.out_dir={cwd / 'trace'}"]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out + err


@needs_fmnist
def test_sigkill_mid_epoch_then_resume_from_last_ckpt_matches_uninterrupted_run(tmp_path):
    marker = tmp_path / "held"
    procs = [_start([], tmp_path / "straight"),
             _start(["--trainer.callbacks+=helpers.training_trace.HoldAfterStep", f"--trainer.callbacks.step={HOLD}",
                     f"--trainer.callbacks.marker={marker}"], tmp_path / "cut")]
    straight, cut = procs
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and cut.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the run did not reach step {HOLD}: {cut.communicate(timeout=30)[1][-3000:]}"
        assert int(marker.read_text()) == cut.pid
        os.kill(cut.pid, signal.SIGKILL)  # training, in the middle of epoch 1
        cut.communicate(timeout=60)
        assert cut.returncode == -signal.SIGKILL
        assert not (tmp_path / "cut" / "trace").exists(), "the killed run should not have reached the end of training"

        last = tmp_path / "cut" / "runs" / "checkpoints" / "last.ckpt"
        saved = torch.load(last, weights_only=False, map_location="cpu")
        assert saved["global_step"] == HOLD - HOLD % EVERY == 20
        assert saved["epoch"] == 1 and saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] is False
        procs.append(resumed := _start([f"--ckpt_path={last}"], tmp_path / "resumed"))
        assert "test accuracy:" in _finish(resumed)
        _finish(straight)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    a = torch.load(tmp_path / "straight" / "trace" / "trace-rank0.pt")
    c = torch.load(tmp_path / "resumed" / "trace" / "trace-rank0.pt")
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in c["initial"].items()), "not resumed from step 20"
    assert a["global_step"] == c["global_step"] == 32
    assert sorted(c["batches"]) == list(range(21, 33)), "the resumed run did not continue at step 21"
    assert all(c["batches"][s] == a["batches"][s] for s in c["batches"]), "the resumed run trained on other batches"
    assert a["params"].keys() == c["params"].keys()
    for name, value in a["params"].items():
        assert torch.equal(value, c["params"][name]), f"{name} differs from the uninterrupted run's"
    checkpoints = tmp_path / "straight" / "runs" / "checkpoints"
    assert list(checkpoints.iterdir()) == [checkpoints / "last.ckpt"]  # the flag's checkpoint, no other
