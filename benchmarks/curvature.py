"""Do a trained network's free phases end at minima of the energy? On trained checkpoints, the largest eigenvalue of
the coupling over the active units (``lightning_ep.stability``) at the end of the free phase.

    python benchmarks/curvature.py --checkpoint fmnist:runs/.../last.ckpt [--checkpoint mnist:...] [--quick]

For each ``DATASET:PATH`` (an ``EPLightningModule`` checkpoint; DATASET fmnist or mnist) and the first ``--samples``
images of that dataset's test split, two free phases on the checkpoint's weights, from the module's own start:
  trained        the module's settings (spiking as trained, its T1 and omega): where EP's nudged phases start;
  non-spiking    the same weights without spikes, ``--settled-t1`` steps (200): where the relaxation settles.
Per phase: ``frac_not_minimum``, the fraction of samples whose eigenvalue is >= 1 (the energy curves downwards along
some direction of their active units: a saddle, not a minimum); the eigenvalue's median and 90th percentile;
``active_fraction`` (units with 0 < s < 1); and the phase's largest last-step state change. Below 1 everywhere
means the relaxation is a contraction there and EP's assumptions hold. Keys: dataset, checkpoint, epoch,
global_step, phase, t1, samples, frac_not_minimum, eig_median, eig_p90, eig_max, active_fraction, last_change,
hardware, command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from common import add_common_args, print_table, setup_threads, stamp, write_json

from lightning_ep import free_phase
from lightning_ep.data import load_split
from lightning_ep.stability import active_coupling_eigenvalue

DATASETS = {"fmnist": "fashion_mnist", "mnist": "mnist"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--checkpoint", action="append", required=True, metavar="DATASET:PATH",
                   help="fmnist:PATH or mnist:PATH, an EPLightningModule checkpoint (repeatable)")
    p.add_argument("--samples", type=int, default=None, help="test images per checkpoint (quick 32, full 512)")
    p.add_argument("--settled-t1", type=int, default=200, help="free steps of the non-spiking phase")
    p.add_argument("--iters", type=int, default=100, help="power-iteration rounds")
    args = p.parse_args(argv)
    args.samples = args.samples or (32 if args.quick else 512)
    for item in args.checkpoint:
        name, _, path = item.partition(":")
        if name not in DATASETS or not path:
            p.error(f"--checkpoint takes DATASET:PATH with DATASET one of {sorted(DATASETS)}, got {item!r}")
        if not Path(path).is_file():
            p.error(f"no checkpoint at {path}")
    return args


def measure(module: Any, x: torch.Tensor, spiking: bool, t1: int, iters: int) -> dict[str, Any]:
    """One free phase on ``x`` and the eigenvalue statistics at its end state."""
    net, phases = module.net, module.phases
    threshold = net.threshold
    net.threshold = threshold if spiking else 0.0
    try:
        free = free_phase(net, x, t1, phases.update, "explicit", None, phases.start, phases.omega)
    finally:
        net.threshold = threshold
    eig = active_coupling_eigenvalue(net, free.state.s, iters, torch.Generator().manual_seed(0))
    active = sum(int(((s > 0) & (s < 1)).sum()) for s in free.state.s)
    return {"t1": t1, "samples": len(x), "frac_not_minimum": float((eig >= 1).float().mean()),
            "eig_median": float(eig.median()), "eig_p90": float(eig.quantile(0.9)), "eig_max": float(eig.max()),
            "active_fraction": active / sum(s.numel() for s in free.state.s), "last_change": free.last_change}


def main(argv: list[str] | None = None) -> int:
    from lightning_ep.module import EPLightningModule

    args = parse_args(argv)
    setup_threads(args.threads)
    records: list[dict[str, Any]] = []
    for item in args.checkpoint:
        name, _, path = item.partition(":")
        module = EPLightningModule.load_from_checkpoint(path, map_location="cpu").eval()
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        xs, _ = load_split(DATASETS[name], train=False, data_dir=args.data_dir)
        x = xs[: args.samples]
        base = {"dataset": DATASETS[name], "checkpoint": path, "epoch": ckpt.get("epoch"),
                "global_step": ckpt.get("global_step")}
        with torch.no_grad():
            records.append({**base, "phase": "trained", **measure(module, x, module.net.spiking, module.phases.t1,
                                                                   args.iters)})
            records.append({**base, "phase": "non-spiking", **measure(module, x, False, args.settled_t1,
                                                                       args.iters)})
    print_table(records, ["dataset", "epoch", "phase", "t1", "frac_not_minimum", "eig_median", "eig_p90", "eig_max",
                          "active_fraction", "last_change"],
                title=f"largest eigenvalue of the coupling over the active units ({args.samples} test images)")
    write_json("curvature", stamp(records), args.out, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
