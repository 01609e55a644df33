"""Memory of one EP training step against one BPTT step (2C2FC, batch 64) as the free phase T1 grows.

Each (method, T1) runs in a fresh Python subprocess (``--child``) that builds the net (2C2FC, hidden 512, avg
pooling, float32), loads the batch the parent saved (FashionMNIST train[0:64]) and an SGD optimizer, then:

1. warms up on a 2-sample batch (T1 = T2 = 2, same method) so that one-time costs (oneDNN kernels and scratch,
   the thread pool, lazy initialisation) are not charged to the step, runs ``gc.collect()`` and
   ``malloc_trim(0)`` (glibc) to hand the warm-up's freed heap back to the OS;
2. resets the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads
   ``VmRSS`` (the baseline);
3. runs one full step: forward (EP: the whole ``equilibrium_propagation`` call, free + both nudged phases at
   async updates, T2 = 10; BPTT: ``bptt_loss`` through T1 async steps) inside ``count_saved_bytes()``, then
   ``backward()`` and ``optimizer.step()``;
4. reads ``VmHWM`` (the peak resident set since the reset).

Records (one per method and T1): method ("ep"/"bptt"), T1, T2, batch, hidden, pooling,
  saved_bytes: bytes of the distinct storages autograd saved for backward during the forward
    (``lightning_ep.memory.count_saved_bytes``; parameters and inputs autograd references are included);
  peak_bytes: VmHWM after the step minus VmRSS before it, i.e. the largest increase of the process's resident
    memory (all allocations: autograd's saved tensors, temporaries, gradients, the allocator's slack) during the
    step; when the high-water mark cannot be reset it falls back to ru_maxrss_delta (and says so in peak_source);
  ru_maxrss_delta: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) after the step minus before it,
    times 1024: the same peak measured against the process's earlier maximum instead of the current RSS. It is
    NOT a reliable per-step figure: Linux carries the parent's high-water mark into a child across fork/exec, so
    ru_maxrss starts at the parent's peak (ru_maxrss_before_bytes, ~the parent benchmark's RSS) and only steps
    that exceed it register (small ones read 0);
  rss_before_bytes, ru_maxrss_before_bytes, step_s (wall time of the step).
Expectation: EP flat in T1 (the free phase runs without a graph), BPTT linear in T1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import Record, add_common_args, load_average, load_batch, print_table, setup_threads, stamp, write_json

MIB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` runs T1 in {20, 50}."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--t1", type=int, nargs="+", default=None, help="free-phase lengths (full 20 50 100 200)")
    p.add_argument("--t2", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--pooling", choices=("avg", "max"), default="avg")
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.t1 = args.t1 or ([20, 50] if args.quick else [20, 50, 100, 200])
    return args


def _status_kib(field: str) -> int | None:
    """A ``VmXXX`` field of /proc/self/status in KiB (None when unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark (VmHWM) to the current RSS; False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    """Return glibc's free heap memory to the OS (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def child(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one step in this (fresh) process; see the module docstring for what is counted."""
    setup_threads(config["threads"])
    from lightning_ep import bptt_loss, equilibrium_propagation, two_conv_two_dense
    from lightning_ep.memory import count_saved_bytes

    torch.manual_seed(0)
    net = two_conv_two_dense(pooling=config["pooling"], hidden=config["hidden"])
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.load(config["batch_file"])

    def step(xb: torch.Tensor, yb: torch.Tensor, t1: int, t2: int) -> int:
        with count_saved_bytes() as saved:
            if config["method"] == "ep":
                loss = equilibrium_propagation(net, xb, yb, beta=config["beta"], t1=t1, t2=t2,
                                               update="async").surrogate
            else:
                loss = bptt_loss(net, xb, yb, t1=t1, update="async").loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return saved.bytes

    step(x[:2], y[:2], 2, 2)  # warm-up: one-time library costs, on a tiny batch
    opt.zero_grad(set_to_none=True)
    gc.collect()
    _malloc_trim()
    reset = _reset_peak()
    rss_before = _status_kib("VmRSS")
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    saved_bytes = step(x, y, config["t1"], config["t2"])
    step_s = time.perf_counter() - start
    ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_after = _status_kib("VmHWM")
    ru_delta = (ru_after - ru_before) * 1024
    if reset and rss_before is not None and hwm_after is not None:
        peak, source = (hwm_after - rss_before) * 1024, "VmHWM-VmRSS"
    else:
        peak, source = ru_delta, "ru_maxrss"
    return {"saved_bytes": saved_bytes, "peak_bytes": peak, "peak_source": source, "ru_maxrss_delta": ru_delta,
            "rss_before_bytes": (rss_before or 0) * 1024, "ru_maxrss_before_bytes": ru_before * 1024,
            "step_s": step_s}


def run_child(args: argparse.Namespace, method: str, t1: int, batch_file: str) -> Record:
    """One measurement in a fresh interpreter; returns its record."""
    config = {"method": method, "t1": t1, "t2": args.t2, "batch": args.batch, "hidden": args.hidden,
              "pooling": args.pooling, "beta": args.beta, "threads": args.threads, "batch_file": batch_file}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {method} T1={t1} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    record = {"method": method, "T1": t1, "T2": args.t2, "batch": args.batch, "hidden": args.hidden,
              "pooling": args.pooling, **result}
    print(f"  {method:4s} T1={t1:<4d} saved {result['saved_bytes'] / MIB:8.2f} MiB  peak "
          f"{result['peak_bytes'] / MIB:8.2f} MiB  ({result['step_s']:.2f} s)")
    return record


def main(argv: list[str] | None = None) -> int:
    """Run every (method, T1) child, print the table and the BPTT/EP ratios, write the JSON."""
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return 0
    setup_threads(args.threads)
    load_start = load_average()
    x, y, source = load_batch(args.batch, offset=0, split="train", allow_synthetic=True, data_dir=args.data_dir)
    print(f"memory: 2C2FC hidden {args.hidden}, {args.pooling} pooling, batch {args.batch} ({source}), T2 "
          f"{args.t2}, T1 {args.t1}, one fresh process per config; load {load_start}")
    records: list[Record] = []
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = str(Path(tmp) / "batch.pt")
        torch.save((x, y), batch_file)
        for t1 in args.t1:
            for method in ("ep", "bptt"):
                records.append(run_child(args, method, t1, batch_file))
    rows = []
    for r in records:
        rows.append({**r, "saved_MiB": r["saved_bytes"] / MIB, "peak_MiB": r["peak_bytes"] / MIB,
                     "ru_maxrss_MiB": r["ru_maxrss_delta"] / MIB})
    print_table(rows, ["method", "T1", "T2", "saved_MiB", "peak_MiB", "ru_maxrss_MiB", "step_s"],
                title="one training step: autograd-saved bytes and peak RSS increase")
    ratios = []
    for t1 in args.t1:
        ep = next(r for r in records if r["method"] == "ep" and r["T1"] == t1)
        bp = next(r for r in records if r["method"] == "bptt" and r["T1"] == t1)
        ratios.append({"T1": t1, "saved_bptt/ep": bp["saved_bytes"] / ep["saved_bytes"],
                       "peak_bptt/ep": bp["peak_bytes"] / max(ep["peak_bytes"], 1)})
    print_table(ratios, ["T1", "saved_bptt/ep", "peak_bptt/ep"], title="BPTT / EP")
    write_json("memory", stamp(records, load_avg_start=load_start, load_avg_end=load_average(), data=source),
               args.out, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
