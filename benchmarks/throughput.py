"""Training throughput of one EP step: explicit closed-form dynamics against autograd-of-energy dynamics.

Network: 2C2FC (``two_conv_two_dense``) at 1x28x28, hidden ``--hidden`` (512), batch ``--batch`` (128), float32,
FashionMNIST train[0:batch]. One EP step = ``equilibrium_propagation`` (free phase T1 + the +beta and -beta phases
T2 each, symmetric estimator) + ``surrogate.backward()`` + ``optimizer.step()`` (SGD). Rows per pooling (avg, max),
without spikes (threshold 0):
  dynamics='explicit', update='sync'   the engine's closed-form drives, all layers at once;
  dynamics='explicit', update='async'  the same, even layers then odd layers;
  dynamics='autograd', update='sync'   ``relax_autograd``: the drives by autograd of the energy at every step, as
                                       the reference implementations do;
and one spiking row per pooling, explicit async at Sigma-Delta threshold ``--spiking-threshold`` (0.01, what the
training configs run): its step adds the Sigma-Delta encoding and the spike counting to the same arithmetic.
Timing: one warm-up step per row, then ``--repeats`` rounds; each round times every row once (round-robin, so
that load from other processes on the shared cores hits every row alike) and reports medians:
  samples_per_s        = batch / median time of a whole training step;
  ms_per_dynamics_step = median time of a free phase alone (``free_phase``, T1 steps, no graph) / T1;
  ms_per_step_incl     = median training-step time / (T1 + 2 T2) (includes the surrogate, backward, optimizer).
Floor (``kind='floor'``): the convolutions one dynamics step must do, each op timed alone (median of
``--floor-repeats``) on the step's shapes: conv1 = F.conv2d of the input (B,1,28,28) with conv1's weight;
conv1T = F.conv_transpose2d of (B,32,24,24) with it; conv2 = F.conv2d of (B,32,12,12); conv2T =
F.conv_transpose2d of (B,64,8,8) with conv2's weight. conv1's transpose is not needed since the input is clamped
(nothing receives its feedback), so the floor is reported with and without it; a third variant drops conv1 too,
since the explicit engine computes conv1's drive once a batch (``input_drive``), while the autograd dynamics
recompute it every step. The engine folds average pooling into the convolution (a 6x6 stride-2 conv, exact and
~3x fewer FLOPs), so ``*_avgfold`` ops time those convolutions too. The dense layers' products are timed the same
way: dense1 = F.linear of (B,1024) to ``hidden`` with bias, dense1T = (B,hidden) @ W1, dense2 = F.linear of
(B,hidden) to 10, dense2T = (B,10) @ W2. ``step_over_floor`` = ms_per_dynamics_step / floor(conv1 + conv2 + conv2T)
for every row (the brief's floor; the folded avg rows can go below 1), ``step_over_conv2_floor`` the same against
conv2 + conv2T, ``step_over_conv_floor`` against the convs the row's code path must do (conv2 + conv2T for
explicit rows, conv1 + conv2 + conv2T for autograd rows, the folded forms for avg pooling; ``conv_floor_ms``), and
``step_over_engine_floor`` against those convs plus the four dense products (``engine_floor_ms``): every
convolution and matrix product the step must run. With hidden 512 the dense products are about a third of that
arithmetic, so a floor of the convolutions alone is no floor of the step.
Keys (``kind='throughput'``): dynamics, update, pooling, threshold, T1, T2, batch, samples_per_s,
ms_per_dynamics_step, ms_per_step_incl, step_ms (median), step_ms_min, free_ms, step_over_floor,
step_over_conv2_floor, conv_floor_ms, step_over_conv_floor, engine_floor_ms, step_over_engine_floor, repeats.
Floor records: kind ('floor' for sums, 'floor_op' per op), variant, floor_ms.
Acceptance (printed PASS/FAIL lines; any FAIL makes the exit code 1): explicit (sync, like for like) at least 1.2x
the autograd samples/s at the same T; the explicit async dynamics step without spikes at most ``ENGINE_FLOOR_GOAL``
times its engine floor (1.2x with average pooling, 1.3x with max pooling). The README's headline ratio is that one;
the spiking rows' ratios are printed beside it (INFO lines).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import Record, add_common_args, load_average, load_batch, print_table, setup_threads, stamp, write_json

from lightning_ep import equilibrium_propagation, free_phase, two_conv_two_dense
from lightning_ep.network import ConvergentNetwork

ROWS = (("explicit", "sync", False), ("explicit", "async", False), ("autograd", "sync", False),
        ("explicit", "async", True))  # (dynamics, update, spiking)
ENGINE_FLOOR_GOAL = {"avg": 1.2, "max": 1.3}  # a dynamics step over the convolutions it runs (explicit, async)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` takes fewer repeats."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--t1", type=int, default=30)
    p.add_argument("--t2", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--poolings", nargs="+", choices=("avg", "max"), default=["avg", "max"])
    p.add_argument("--spiking-threshold", type=float, default=0.01, help="Sigma-Delta threshold of the spiking rows")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (quick 3, full 10)")
    p.add_argument("--floor-repeats", type=int, default=None, help="timed calls per conv op (quick 10, full 30)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.floor_repeats = args.floor_repeats or (10 if args.quick else 30)
    return args


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_ops(batch: int, hidden: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of each convolution and dense product of one dynamics step on the 2C2FC shapes (one
    warm-up call)."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(32, 1, 5, 5, generator=g), torch.randn(64, 32, 5, 5, generator=g)
    w1f, w2f = torch.randn(32, 1, 6, 6, generator=g), torch.randn(64, 32, 6, 6, generator=g)
    x, u1 = torch.rand(batch, 1, 28, 28, generator=g), torch.rand(batch, 32, 24, 24, generator=g)
    s1, u2 = torch.rand(batch, 32, 12, 12, generator=g), torch.rand(batch, 64, 8, 8, generator=g)
    v2 = torch.rand(batch, 64, 4, 4, generator=g)
    wd1, bd1 = torch.randn(hidden, 1024, generator=g), torch.randn(hidden, generator=g)
    wd2, bd2 = torch.randn(10, hidden, generator=g), torch.randn(10, generator=g)
    h1, h2 = torch.rand(batch, 1024, generator=g), torch.rand(batch, hidden, generator=g)
    o = torch.rand(batch, 10, generator=g)
    ops: dict[str, Callable[[], Any]] = {
        "conv1": lambda: F.conv2d(x, w1),
        "conv1T": lambda: F.conv_transpose2d(u1, w1),
        "conv2": lambda: F.conv2d(s1, w2),
        "conv2T": lambda: F.conv_transpose2d(u2, w2),
        # average pooling folded into a 6x6 stride-2 convolution, as the engine's SpikingConv2d does it
        "conv1_avgfold": lambda: F.conv2d(x, w1f, stride=2),
        "conv2_avgfold": lambda: F.conv2d(s1, w2f, stride=2),
        "conv2T_avgfold": lambda: F.conv_transpose2d(v2, w2f, stride=2),
        "dense1": lambda: F.linear(h1, wd1, bd1),
        "dense1T": lambda: h2 @ wd1,
        "dense2": lambda: F.linear(h2, wd2, bd2),
        "dense2T": lambda: o @ wd2,
    }
    out = {}
    with torch.no_grad():
        for name, fn in ops.items():
            fn()
            out[name] = 1e3 * statistics.median(timed(fn) for _ in range(repeats))
    return out


def make_step(net: ConvergentNetwork, x: torch.Tensor, y: torch.Tensor, dynamics: str, update: str,
              args: argparse.Namespace) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The training step and the free phase alone, for one row."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def step() -> None:
        res = equilibrium_propagation(net, x, y, beta=args.beta, t1=args.t1, t2=args.t2, update=update,
                                      dynamics=dynamics)
        opt.zero_grad()
        res.surrogate.backward()
        opt.step()

    def free() -> None:
        free_phase(net, x, args.t1, update=update, dynamics=dynamics)

    return step, free


def main(argv: list[str] | None = None) -> int:
    """Time every row round-robin, then the floor; print the tables and the speed-ups; write the JSON."""
    args = parse_args(argv)
    setup_threads(args.threads)
    load_start = load_average()
    x, y, source = load_batch(args.batch, offset=0, split="train", allow_synthetic=True, data_dir=args.data_dir)
    print(f"throughput: 2C2FC hidden {args.hidden}, batch {args.batch} ({source}), T1 {args.t1}, T2 {args.t2}, "
          f"{args.repeats} rounds after a warm-up, {torch.get_num_threads()} threads; load {load_start}")
    rows: list[dict[str, Any]] = []
    for pooling in args.poolings:
        for dynamics, update, spiking in ROWS:
            torch.manual_seed(0)
            threshold = args.spiking_threshold if spiking else 0.0
            net = two_conv_two_dense(pooling=pooling, hidden=args.hidden, threshold=threshold)
            step, free = make_step(net, x, y, dynamics, update, args)
            step()  # warm-up
            free()
            rows.append({"dynamics": dynamics, "update": update, "pooling": pooling, "threshold": threshold,
                         "step": step, "free": free, "step_s": [], "free_s": []})
    for k in range(args.repeats):
        for row in rows:
            row["step_s"].append(timed(row["step"]))
            row["free_s"].append(timed(row["free"]))
        print(f"  round {k + 1}/{args.repeats} done")
    ops = floor_ops(args.batch, args.hidden, args.floor_repeats)
    dense = ops["dense1"] + ops["dense1T"] + ops["dense2"] + ops["dense2T"]
    floors = {
        "conv1+conv1T+conv2+conv2T": ops["conv1"] + ops["conv1T"] + ops["conv2"] + ops["conv2T"],
        "conv1+conv2+conv2T": ops["conv1"] + ops["conv2"] + ops["conv2T"],
        "conv2+conv2T": ops["conv2"] + ops["conv2T"],
        "avgfold conv1+conv2+conv2T": ops["conv1_avgfold"] + ops["conv2_avgfold"] + ops["conv2T_avgfold"],
        "avgfold conv2+conv2T": ops["conv2_avgfold"] + ops["conv2T_avgfold"],
        "dense1+dense1T+dense2+dense2T": dense,
    }
    n_dyn = args.t1 + 2 * args.t2
    records: list[Record] = []
    for row in rows:
        step_ms, free_ms = 1e3 * statistics.median(row["step_s"]), 1e3 * statistics.median(row["free_s"])
        per_step = free_ms / args.t1
        fold = "avgfold " if row["pooling"] == "avg" else ""
        convs = floors[f"{fold}conv2+conv2T" if row["dynamics"] == "explicit" else f"{fold}conv1+conv2+conv2T"]
        engine = convs + dense
        records.append({
            "kind": "throughput", "dynamics": row["dynamics"], "update": row["update"], "pooling": row["pooling"],
            "threshold": row["threshold"], "T1": args.t1, "T2": args.t2, "batch": args.batch, "hidden": args.hidden,
            "samples_per_s": args.batch / (step_ms / 1e3), "ms_per_dynamics_step": per_step,
            "ms_per_step_incl": step_ms / n_dyn, "step_ms": step_ms, "step_ms_min": 1e3 * min(row["step_s"]),
            "free_ms": free_ms, "step_over_floor": per_step / floors["conv1+conv2+conv2T"],
            "step_over_conv2_floor": per_step / floors["conv2+conv2T"], "conv_floor_ms": convs,
            "step_over_conv_floor": per_step / convs, "engine_floor_ms": engine,
            "step_over_engine_floor": per_step / engine, "repeats": args.repeats,
        })
    floor_records = [{"kind": "floor", "variant": v, "floor_ms": ms, "batch": args.batch} for v, ms in floors.items()]
    floor_records += [{"kind": "floor_op", "variant": op, "floor_ms": ms, "batch": args.batch}
                      for op, ms in ops.items()]

    print_table(records, ["pooling", "dynamics", "update", "threshold", "samples_per_s", "step_ms", "step_ms_min",
                          "ms_per_dynamics_step", "ms_per_step_incl", "step_over_floor", "step_over_conv2_floor",
                          "step_over_conv_floor", "step_over_engine_floor"],
                title=f"one EP training step, batch {args.batch}, T1 {args.t1}, T2 {args.t2} (medians)")
    print_table(floor_records, ["kind", "variant", "floor_ms"],
                title="convolution and dense-product floor of one dynamics step")
    speedups = []
    for pooling in args.poolings:
        by = {(r["dynamics"], r["update"]): r for r in records if r["pooling"] == pooling and not r["threshold"]}
        ref = by[("autograd", "sync")]
        for update in ("sync", "async"):
            ex = by[("explicit", update)]
            speedups.append({"pooling": pooling, "explicit": update,
                             "samples_per_s_ratio": ex["samples_per_s"] / ref["samples_per_s"],
                             "dynamics_step_ratio": ref["ms_per_dynamics_step"] / ex["ms_per_dynamics_step"]})
    print_table(speedups, ["pooling", "explicit", "samples_per_s_ratio", "dynamics_step_ratio"],
                title="speed-up of explicit over autograd (sync) dynamics")
    failed = False
    for s in speedups:
        if s["explicit"] == "sync":
            ok = s["samples_per_s_ratio"] >= 1.2
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}: {s['pooling']} pooling, explicit sync {s['samples_per_s_ratio']:.2f}x "
                  f"the autograd samples/s at T1={args.t1}, T2={args.t2} (criterion >= 1.2x)")
    for r in records:
        if r["dynamics"] == "explicit" and r["update"] == "async":
            ratios = (f"{r['step_over_engine_floor']:.2f}x the convolutions and dense products it runs "
                      f"({r['engine_floor_ms']:.2f} ms), {r['step_over_conv_floor']:.2f}x its convolutions alone "
                      f"({r['conv_floor_ms']:.2f} ms)")
            if r["threshold"]:
                print(f"INFO: {r['pooling']} pooling, spiking (threshold {r['threshold']}): a dynamics step costs "
                      f"{ratios}")
                continue
            goal = ENGINE_FLOOR_GOAL[r["pooling"]]
            ok = r["step_over_engine_floor"] <= goal
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}: {r['pooling']} pooling, a dynamics step costs {ratios} "
                  f"(goal <= {goal}x the former)")
    load_end = load_average()
    print(f"load average at start {load_start}, at end {load_end} (other processes share the cores)")
    write_json("throughput", stamp(records + floor_records, load_avg_start=load_start, load_avg_end=load_end,
                                   data=source, threads=torch.get_num_threads()), args.out, args.quick)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
