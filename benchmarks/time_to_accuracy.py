"""Time to a fixed FashionMNIST accuracy: our setting against the reference-style setting, in one run.

    python benchmarks/time_to_accuracy.py [--quick] [--target 0.8] [--threshold 0.0]

Both train the same 2C2FC network (hidden 256, avg pooling; ``--threshold`` > 0 makes it spiking) from the same
initial weights on the same batches (Adam, lr 1e-3, batch 64, beta 0.3, symmetric estimator):
  ours       explicit closed-form dynamics, async (even/odd) updates, T1=30, T2=10
  reference  autograd-of-energy dynamics, synchronous updates, T1=200, T2=10 (as in the reference scripts)
Every ``--eval-every`` batches each is evaluated on 2000 held-out training images (the last 2000, never trained
on) with its own free phase; the clock counts training only. ``seconds`` is the training time until the held-out
accuracy first reaches ``--target`` (null if it did not within ``--budget`` seconds). Keys: setting, dataset,
target_accuracy, seconds, reached, samples, hardware, command.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_common_args, load_batch, print_table, setup_threads, stamp, write_json

from lightning_ep import equilibrium_propagation, free_phase, two_conv_two_dense

SETTINGS = {
    "ours": {"t1": 30, "t2": 10, "update": "async", "dynamics": "explicit"},
    "reference": {"t1": 200, "t2": 10, "update": "sync", "dynamics": "autograd"},
}


def run(setting: str, args: argparse.Namespace) -> dict:
    cfg = SETTINGS[setting]
    torch.manual_seed(0)
    net = two_conv_two_dense(hidden=256, pooling="avg", threshold=args.threshold)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_val, y_val, _ = load_batch(2000, offset=58000)
    train_seconds, samples, batch_idx, accuracy = 0.0, 0, 0, 0.0
    order = torch.randperm(58000, generator=torch.Generator().manual_seed(0))
    x_all, y_all, _ = load_batch(58000)
    while train_seconds < args.budget:
        idx = order[(batch_idx * 64) % 57984 :][:64]
        start = time.perf_counter()
        ep = equilibrium_propagation(net, x_all[idx], y_all[idx], 0.3, cfg["t1"], cfg["t2"],
                                     update=cfg["update"], dynamics=cfg["dynamics"])
        opt.zero_grad()
        ep.surrogate.backward()
        opt.step()
        train_seconds += time.perf_counter() - start
        samples += len(idx)
        batch_idx += 1
        if batch_idx % args.eval_every == 0:
            free = free_phase(net, x_val, cfg["t1"], cfg["update"], cfg["dynamics"])
            accuracy = (net.logits(free.state.s).argmax(1) == y_val).float().mean().item()
            print(f"  {setting}: {samples} samples, {train_seconds:.1f} s, held-out accuracy {accuracy:.3f}",
                  flush=True)
            if accuracy >= args.target:
                return {"setting": setting, "seconds": round(train_seconds, 1), "reached": True, "samples": samples}
    return {"setting": setting, "seconds": None, "reached": False, "samples": samples, "last_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--target", type=float, default=0.8, help="held-out accuracy to reach (default 0.8)")
    parser.add_argument("--threshold", type=float, default=0.0, help="Sigma-Delta threshold (0: non-spiking)")
    parser.add_argument("--eval-every", type=int, default=None, help="batches between evaluations (quick 10, 20)")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per setting (quick 50, 900)")
    args = parser.parse_args()
    args.eval_every = args.eval_every or (10 if args.quick else 20)
    args.budget = args.budget or (50.0 if args.quick else 900.0)
    if args.quick:
        args.target = min(args.target, 0.6)
    setup_threads(args.threads)
    records = [run(s, args) for s in SETTINGS]
    for r in records:
        r.update(dataset="fashion_mnist", target_accuracy=args.target, threshold=args.threshold)
    print_table(records, ["setting", "target_accuracy", "seconds", "samples", "reached"])
    ours, ref = records
    if ours["reached"] and ref["reached"]:
        print(f"ours reaches {args.target:.0%} {ref['seconds'] / ours['seconds']:.1f}x sooner than the reference")
    write_json("time_to_accuracy", stamp(records), args.out)


if __name__ == "__main__":
    main()
