"""Time to a fixed FashionMNIST test accuracy: our setting against the reference-style setting, in one run, with
controls that change one thing at a time.

    python benchmarks/time_to_accuracy.py [--quick] [--target 0.88] [--budget 3600] [--part all|main|controls]

``--part main`` runs ours and the reference (``results/time_to_accuracy_main.json``), ``--part controls`` ours and
the two controls (``results/time_to_accuracy_controls.json``), ``all`` (the default) the four
(``results/time_to_accuracy_all.json``; ``results/time_to_accuracy.json`` holds a run of an older protocol, target
0.80): every ratio is between settings of one run. All four take up to four hours,
``main`` up to two and ``controls`` up to three. ``--settings`` picks settings by name instead (``_custom``).

Every setting trains the same spiking 2C2FC network (hidden 256, avg pooling, Sigma-Delta threshold 0.01) from the
same initial weights on the same batches (Adam, lr 1e-3 constant, batch 64, symmetric estimator):
  ours            explicit closed-form dynamics, async (even/odd) updates over-relaxed (omega 1.3), free phase
                  from a feed-forward sweep, T1=12, T2=8, and the curvature bound 0.9 (the penalty of
                  ``CurvatureConfig(bound=0.9)``, inside the clock): the best of ``levers.py``'s one-epoch
                  settings (``recipes/configs/fmnist_demo.yaml`` with ``--model.curvature.bound 0.9``)
  reference       autograd-of-energy dynamics, synchronous updates, from zeros, T1=200, T2=10, beta 0.2 (as in the
                  reference scripts)
  ours_at_ref_T   control: our engine, start and curvature bound at the reference's T1=200, T2=10
  ref_at_our_T    control: the reference dynamics (autograd, sync, from zeros) at our T1=12, T2=8
The clock counts training only. Every ``--eval-every`` training seconds a setting is evaluated, outside the clock,
with its own free phase (the autograd settings through the explicit synchronous dynamics, which compute the same
steps, see tests/test_energy_dynamics.py): first on the first 2,000 test images, and when that is within 1 point of
the target on the whole 10,000-image test set. ``seconds`` is the training time at the first evaluation whose
full-test accuracy reaches ``--target``; a setting that has not reached it within ``--budget`` training seconds is
reported with ``reached: false`` and ``seconds: null``, and a ratio against it as a lower bound (``>``).
Keys: setting, dataset, target_accuracy, seconds, reached, samples, test_accuracy (the last full-test accuracy
measured, or null), last_accuracy_2000, evaluations (each evaluation's training seconds, samples, accuracy_2000
and test_accuracy, null where the full test set was not evaluated), budget_s, test_samples (10,000; fewer with
``--test-subset``, for smoke tests), t1, t2, update, dynamics, start, omega, curvature_bound (the curvature
penalty's, or null), hardware, command.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import add_common_args, load_batch, print_table, setup_threads, stamp, training_objective, write_json

from lightning_ep import equilibrium_propagation, free_phase, two_conv_two_dense

BETA = 0.2
THRESHOLD = 0.01
SETTINGS: dict[str, dict[str, Any]] = {
    "ours": {"t1": 12, "t2": 8, "update": "async", "dynamics": "explicit", "start": "feedforward", "omega": 1.3,
             "curvature_bound": 0.9},
    "reference": {"t1": 200, "t2": 10, "update": "sync", "dynamics": "autograd", "start": "zeros", "omega": 1.0},
    "ours_at_ref_T": {"t1": 200, "t2": 10, "update": "async", "dynamics": "explicit", "start": "feedforward",
                      "omega": 1.3, "curvature_bound": 0.9},
    "ref_at_our_T": {"t1": 12, "t2": 8, "update": "sync", "dynamics": "autograd", "start": "zeros", "omega": 1.0},
}
PARTS = {"all": list(SETTINGS), "main": ["ours", "reference"], "controls": ["ours", "ours_at_ref_T", "ref_at_our_T"]}


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any]) -> float:
    """Test accuracy with the setting's own free phase (explicit dynamics: the autograd ones compute the same)."""
    correct = 0
    for i in range(0, len(y), 1000):
        free = free_phase(net, x[i : i + 1000], cfg["t1"], cfg["update"], "explicit", start=cfg["start"],
                          omega=cfg["omega"])
        correct += int((net.logits(free.state.s).argmax(1) == y[i : i + 1000]).sum())
    return correct / len(y)


def run(setting: str, args: argparse.Namespace, train: tuple, test: tuple) -> dict[str, Any]:
    """Train one setting until its full-test accuracy reaches the target or the budget is spent."""
    cfg = SETTINGS[setting]
    torch.manual_seed(0)
    net = two_conv_two_dense(hidden=256, pooling="avg", threshold=THRESHOLD)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    (x_all, y_all), (x_test, y_test) = train, test
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    batches = len(y_all) // 64
    train_seconds, samples, batch_idx, next_eval = 0.0, 0, 0, args.eval_every
    out: dict[str, Any] = {"setting": setting, "seconds": None, "reached": False, "test_accuracy": None,
                           "curvature_bound": None, **cfg, "evaluations": []}
    while train_seconds < args.budget:
        if batch_idx % batches == 0 and batch_idx:
            order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(batch_idx))
        idx = order[(batch_idx % batches) * 64 :][:64]
        start = time.perf_counter()
        ep = equilibrium_propagation(net, x_all[idx], y_all[idx], BETA, cfg["t1"], cfg["t2"], update=cfg["update"],
                                     dynamics=cfg["dynamics"], start=cfg["start"], omega=cfg["omega"])
        opt.zero_grad()
        training_objective(net, ep, cfg.get("curvature_bound")).backward()
        opt.step()
        train_seconds += time.perf_counter() - start
        samples += len(idx)
        batch_idx += 1
        if train_seconds < next_eval and train_seconds < args.budget:
            continue
        next_eval += args.eval_every
        first = accuracy(net, x_test[:2000], y_test[:2000], cfg)
        out["last_accuracy_2000"] = first
        point = {"seconds": round(train_seconds, 1), "samples": samples, "accuracy_2000": first, "test_accuracy": None}
        out["evaluations"].append(point)
        line = f"  {setting}: {samples} samples, {train_seconds:.0f} s, test[:2000] {first:.4f}"
        if first >= args.target - 0.01:
            out["test_accuracy"] = point["test_accuracy"] = full = accuracy(net, x_test, y_test, cfg)
            line += f", test {full:.4f}"
            if full >= args.target:
                print(line, flush=True)
                return {**out, "seconds": round(train_seconds, 1), "reached": True, "samples": samples}
        print(line, flush=True)
    return {**out, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--target", type=float, default=0.88, help="test accuracy to reach (default 0.88)")
    parser.add_argument("--eval-every", type=float, default=None, help="training seconds between evaluations "
                        "(quick 10, full 120)")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per setting (quick 30, 3600)")
    parser.add_argument("--part", choices=tuple(PARTS), default="all", help="which settings run (see above)")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=None,
                        help="these settings instead of a part's")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="evaluate on the first N test images only (default all 10,000; for smoke tests)")
    args = parser.parse_args()
    args.eval_every = args.eval_every or (10.0 if args.quick else 120.0)
    args.budget = args.budget or (30.0 if args.quick else 3600.0)
    if args.quick:
        args.target = min(args.target, 0.5)
    setup_threads(args.threads)
    train = load_batch(60000, data_dir=args.data_dir)[:2]
    test = load_batch(args.test_subset or 10000, split="test", data_dir=args.data_dir)[:2]
    settings = args.settings or PARTS[args.part]
    records = [run(s, args, train, test) for s in settings]
    for r in records:
        r.update(dataset="fashion_mnist", target_accuracy=args.target, budget_s=args.budget, threshold=THRESHOLD,
                 test_samples=len(test[1]))
    print_table(records, ["setting", "t1", "t2", "update", "dynamics", "start", "seconds", "samples",
                          "test_accuracy", "reached"])
    by = {r["setting"]: r for r in records}
    ours = by.get("ours")
    if ours is not None and ours["reached"]:
        for name, r in by.items():
            if name != "ours":
                bound = "" if r["reached"] else ">"
                ratio = (r["seconds"] if r["reached"] else args.budget) / ours["seconds"]
                print(f"ours reaches {args.target:.0%} {bound}{ratio:.1f}x sooner than {name}")
    name = "custom" if args.settings else args.part
    write_json(f"time_to_accuracy_{name}", stamp(records), args.out, args.quick)


if __name__ == "__main__":
    main()
