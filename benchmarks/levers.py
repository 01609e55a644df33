"""What each lever of the EP training step buys: steps, seconds and accuracy per setting, and how close each
setting's gradient is to the gradient at the settled fixed point.

    python benchmarks/levers.py [--quick] [--part epoch|alignment|both] [--checkpoint runs/.../last.ckpt]

(``alignment`` and ``both`` need ``--checkpoint``.)

``epoch``: each setting trains the spiking 2C2FC (hidden 256, avg pooling, Sigma-Delta threshold 0.01) for one epoch
of FashionMNIST (55,000 images, batch 64, Adam 1e-3 annealed to 0 by a cosine over the epoch) from the same weights
on the same batches, then is evaluated on the 5,000 held-out training images (the DataModules' validation split)
with its own free phase. The curvature-bound settings add the module's curvature penalty to the EP surrogate
(``common.training_objective``), its cost inside the clock. Keys: setting, t1, t2, start, omega, beta,
curvature_bound, threshold, train_s (training seconds, the evaluation outside), steps_per_batch (steps run per
training batch, all phases), val_acc, val_change (the evaluation's largest last-step state change), train_change
(the last batch's).

``alignment``: on a trained checkpoint (``--checkpoint``, an ``EPLightningModule`` one), for ``--batches`` batches of
64 test images, the cosine over all parameters between each setting's EP gradient (beta 0.2, symmetric) and the
BPTT gradient of the same network *without spikes* through ``--bptt-t1`` free steps from the feed-forward sweep,
where it has settled (``ref_change``: that BPTT run's last state change). Not the spiking network's: at a spiking
fixed point its straight-through BPTT gradient grows without bound with the steps. Keys: setting, t1, t2, omega,
cos_mean, cos_per_batch, ref_change_max.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import add_common_args, load_batch, print_table, setup_threads, stamp, training_objective, write_json

from lightning_ep import bptt_loss, equilibrium_propagation, free_phase, two_conv_two_dense

EPOCH_SETTINGS: dict[str, dict[str, Any]] = {
    "zeros, T1 30, T2 10, beta 0.3": {"t1": 30, "t2": 10, "start": "zeros", "omega": 1.0, "beta": 0.3},
    "zeros, T1 30, T2 10, beta 0.3, curvature bound 0.9 (the paper configs)":
        {"t1": 30, "t2": 10, "start": "zeros", "omega": 1.0, "beta": 0.3, "curvature_bound": 0.9},
    "feed-forward, T1 15, T2 10, beta 0.3": {"t1": 15, "t2": 10, "start": "feedforward", "omega": 1.0, "beta": 0.3},
    "feed-forward, T1 10, T2 8, beta 0.3": {"t1": 10, "t2": 8, "start": "feedforward", "omega": 1.0, "beta": 0.3},
    "feed-forward, T1 10, T2 8, beta 0.2": {"t1": 10, "t2": 8, "start": "feedforward", "omega": 1.0, "beta": 0.2},
    "feed-forward, omega 1.3, T1 12, T2 8, beta 0.2 (the demo config)":
        {"t1": 12, "t2": 8, "start": "feedforward", "omega": 1.3, "beta": 0.2},
    "feed-forward, omega 1.3, T1 12, T2 8, beta 0.2, curvature bound 0.9":
        {"t1": 12, "t2": 8, "start": "feedforward", "omega": 1.3, "beta": 0.2, "curvature_bound": 0.9},
}
ALIGNMENT_SETTINGS = [(10, 8, 1.0), (15, 8, 1.0), (30, 10, 1.0), (12, 8, 1.3), (15, 8, 1.3), (15, 10, 1.3)]


def epoch_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One epoch per setting, from the same weights on the same batches; validation outside the clock."""
    x, y, _ = load_batch(60000, data_dir=args.data_dir)
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0))  # the DataModules' split (seed 0)
    vx, vy, tx, ty = x[order[:5000]], y[order[:5000]], x[order[5000:]], y[order[5000:]]
    tx, ty, vx, vy = tx[: args.train_samples], ty[: args.train_samples], vx[: args.val_samples], vy[: args.val_samples]
    batches = len(ty) // 64
    out = []
    for name, cfg in EPOCH_SETTINGS.items():
        torch.manual_seed(0)
        net = two_conv_two_dense(hidden=256, pooling="avg", threshold=0.01)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, batches)
        perm = torch.randperm(len(ty), generator=torch.Generator().manual_seed(1))
        seconds, steps, ep = 0.0, 0, None
        for b in range(batches):
            idx = perm[b * 64 : (b + 1) * 64]
            start = time.perf_counter()
            ep = equilibrium_propagation(net, tx[idx], ty[idx], cfg["beta"], cfg["t1"], cfg["t2"], start=cfg["start"],
                                         omega=cfg["omega"])
            opt.zero_grad()
            training_objective(net, ep, cfg.get("curvature_bound")).backward()
            opt.step()
            sched.step()
            seconds += time.perf_counter() - start
            steps += sum(p.steps for p in ep.phases.values())
        correct, change = 0, 0.0
        for i in range(0, len(vy), 500):
            free = free_phase(net, vx[i : i + 500], cfg["t1"], start=cfg["start"], omega=cfg["omega"])
            correct += int((net.logits(free.state.s).argmax(1) == vy[i : i + 500]).sum())
            change = max(change, free.last_change)
        assert ep is not None
        row = {"setting": name, "curvature_bound": None, **cfg, "threshold": 0.01, "train_s": round(seconds, 1),
               "steps_per_batch": steps / batches, "val_acc": correct / len(vy), "val_change": round(change, 4),
               "train_change": round(ep.phases["free"].last_change, 4)}
        print(f"  {name}: {row['train_s']} s, val acc {row['val_acc']:.4f}", flush=True)
        out.append(row)
    return out


def alignment_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Cosine of each setting's EP gradient to the settled BPTT gradient on a trained checkpoint."""
    from lightning_ep.module import EPLightningModule

    if args.checkpoint is None:
        raise SystemExit("--part alignment needs --checkpoint PATH (an EPLightningModule checkpoint, e.g. the "
                         "last.ckpt of a FashionMNIST run under runs/)")
    net = EPLightningModule.load_from_checkpoint(args.checkpoint, map_location="cpu").net
    params = list(net.parameters())
    threshold = net.threshold
    x_all, y_all, _ = load_batch(64 * args.batches, split="test", data_dir=args.data_dir)

    def flat(objective: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(objective, params)])

    cosines: dict[tuple, list[float]] = {c: [] for c in ALIGNMENT_SETTINGS}
    ref_change = 0.0
    for k in range(args.batches):
        x, y = x_all[64 * k : 64 * (k + 1)], y_all[64 * k : 64 * (k + 1)]
        net.threshold = 0.0  # the reference: the same network without spikes, at its settled state
        ref = bptt_loss(net, x, y, args.bptt_t1, start="feedforward")
        ref_change = max(ref_change, ref.free.last_change)
        g_ref = flat(ref.loss)
        net.threshold = threshold
        for t1, t2, omega in ALIGNMENT_SETTINGS:
            g = flat(equilibrium_propagation(net, x, y, 0.2, t1, t2, start="feedforward", omega=omega).surrogate)
            cosines[(t1, t2, omega)].append(float(g @ g_ref / (g.norm() * g_ref.norm())))
    return [{"setting": f"T1 {t1}, T2 {t2}, omega {omega}", "t1": t1, "t2": t2, "omega": omega,
             "cos_mean": sum(v) / len(v), "cos_per_batch": [round(c, 4) for c in v], "ref_change_max": ref_change,
             "checkpoint": str(args.checkpoint), "bptt_t1": args.bptt_t1}
            for (t1, t2, omega), v in cosines.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--part", choices=("epoch", "alignment", "both"), default="epoch")
    parser.add_argument("--checkpoint", default=None, help="an EPLightningModule checkpoint (alignment part)")
    parser.add_argument("--batches", type=int, default=None, help="test batches of 64 (quick 1, full 4)")
    parser.add_argument("--bptt-t1", type=int, default=200, help="free steps of the settled BPTT reference")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="epoch part: training images of the epoch (quick 640, full all 55,000)")
    parser.add_argument("--val-samples", type=int, default=None,
                        help="epoch part: held-out images evaluated (quick 500, full all 5,000)")
    args = parser.parse_args()
    args.batches = args.batches or (1 if args.quick else 4)
    args.train_samples = args.train_samples or (640 if args.quick else 55000)
    args.val_samples = args.val_samples or (500 if args.quick else 5000)
    setup_threads(args.threads)
    records: list[dict[str, Any]] = []
    if args.part in ("epoch", "both"):
        rows = epoch_part(args)
        print_table(rows, ["setting", "steps_per_batch", "train_s", "val_acc", "val_change", "train_change"],
                    title="one epoch of FashionMNIST per setting (validation: held-out training images)")
        records += [{"part": "epoch", **r} for r in rows]
    if args.part in ("alignment", "both"):
        rows = alignment_part(args)
        print_table(rows, ["setting", "cos_mean", "ref_change_max"],
                    title=f"cosine of EP (beta 0.2) to non-spiking BPTT through {args.bptt_t1} settled steps")
        records += [{"part": "alignment", **r} for r in rows]
    write_json("levers", stamp(records), args.out, args.quick)


if __name__ == "__main__":
    main()
