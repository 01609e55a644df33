"""Multi-node DDP on Lightning's own launcher: the recipe under ``torchrun`` as two nodes of one process each (on the
loopback address, gloo) trains, and both ranks end with the parameters of a single process over the same global
batches.

The global batches: under DDP, Lightning wraps the data module's ``EpochSeededSampler`` in a
``DistributedSamplerWrapper`` (shuffled with the run's seed and the epoch), which deals the wrapped order out to the
ranks in turn (rank r takes positions r, r + 2, ...). Step i of 2 ranks with batch b therefore trains on positions
2ib .. 2ib + 2b - 1 of that order, which is step i of one process with batch 2b over the same order: a single process
under ``--trainer.strategy ddp`` (world size 1, so the same wrapper over all of it). The traces check this sample by
sample. The parameters then agree to rounding, not bit for bit: the ranks average two means over b samples where
the single process takes one mean over 2b. In float32 that rounding (up to 7e-7 after one step) grows to 3e-4 after
six steps (a third of Adam's step at lr 1e-3: the spiking network's quantized states and Adam's normalization amplify
it), so the runs are in float64 (``--trainer.precision 64-true``: 3e-15 after six steps) and compared to 1e-12.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import needs_fmnist
from test_recipes import ROOT, SMALL, _env

BATCH = 16  # per rank
STEPS = 6
RUN = [*SMALL, "--trainer.logger=false", f"--trainer.max_steps={STEPS}", "--trainer.accelerator=cpu",
       "--trainer.precision=64-true", "--trainer.limit_test_batches=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``cmd`` in its own process group (a torchrun agent and its worker can be stopped together)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env={**_env(), "GLOO_SOCKET_IFNAME": "lo", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _recipe(out_dir: Path, batch_size: int, num_nodes: int) -> list[str]:
    """The recipe's command line: DDP on ``num_nodes`` nodes of one CPU process each, traced to ``out_dir``."""
    return [str(ROOT / "recipes" / "fmnist.py"), *RUN, f"--data.batch_size={batch_size}",
            f"--trainer.num_nodes={num_nodes}", "--trainer.devices=1", "--trainer.strategy=ddp",
            "--trainer.callbacks+=helpers.training_trace.TrainingTrace", f"--trainer.callbacks.out_dir={out_dir}"]


@needs_fmnist
def test_torchrun_two_nodes_match_a_single_process_over_the_same_global_batches(tmp_path):
    port = _free_port()
    nodes = [_start([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                     "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                     *_recipe(tmp_path / "two", BATCH, num_nodes=2)], tmp_path / f"node{rank}")
             for rank in (0, 1)]
    single = _start([sys.executable, *_recipe(tmp_path / "one", 2 * BATCH, num_nodes=1)], tmp_path / "single",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [*nodes, single]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "test accuracy:" in outputs[0][0]
    assert "MEMBER: 2/2" in outputs[1][1], "node 1 did not join as the second of two processes"

    ranks = [torch.load(tmp_path / "two" / f"trace-rank{r}.pt") for r in (0, 1)]
    one = torch.load(tmp_path / "one" / "trace-rank0.pt")
    assert [t["world_size"] for t in ranks] == [2, 2] and one["world_size"] == 1
    assert [t["global_step"] for t in ranks] == [STEPS, STEPS] and one["global_step"] == STEPS
    for step in range(1, STEPS + 1):
        a, b = ranks[0]["batches"][step], ranks[1]["batches"][step]
        assert len(a) == len(b) == BATCH and not set(a) & set(b), f"step {step}: the ranks' batches overlap"
        assert sorted(a + b) == sorted(one["batches"][step]), f"step {step}: not the single process's global batch"
    for name, value in one["params"].items():
        assert value.dtype == torch.float64
        assert not torch.equal(value, one["initial"][name]), f"{name} did not train"
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), f"{name} differs between the ranks"
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=0, atol=1e-12, msg=f"{name}")
