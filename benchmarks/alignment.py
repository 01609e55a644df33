"""EP-vs-BPTT gradient alignment and the forward/backward route activations of the conv layers (paper Fig. 2/3).

Network: 2C2FC (``two_conv_two_dense``) at MNIST shape 1x28x28, hidden width ``--hidden`` (256), mse output.
Cells: {non-spiking (threshold 0), spiking (graded Sigma-Delta, ``--thresholds`` 0.01 and 0.003, in units of the
[0, 1] state range), spiking dithered (the same thresholds; stochastic rounding of the spike counts, a seeded
generator whose stream both nudged phases replay, the energy at the states averaged over the last
``--average-last`` nudged steps, full 60 of T2 100)} x {max, avg} x ``--betas`` (quick 0.01 0.05, full 0.01 0.05
0.2).

Weights: for each pooling kind one network is trained a little (``--train-steps`` EP steps, quick 10 / full 60;
Adam lr 3e-4 (1e-3 silenced conv2 of the max net), beta 0.2, T1 40, T2 10, non-spiking, async updates,
FashionMNIST train batches of 64) from the same seed, so that the states are not trivial. The non-spiking and
the spiking cells of a pooling kind use those same weights (spiking is the threshold switch only); max and avg
therefore differ in their weights as well as in their pooling. Every cell is measured on the same held-out batch
(FashionMNIST test[0:batch], quick 32, full 64) in ``--dtype`` float64 (float32 leaves the free phase moving by
~1e-7 and at beta 0.01 took conv1's bias to cos 0.96), with asynchronous (even/odd) updates.

Per cell and beta (small beta has less finite-beta bias, but the spiking cells' nudge must beat the threshold):
the EP gradient (symmetric estimator, +-beta, T1 free and T2 nudged steps; quick 150/40, full 300/100) and the
BPTT gradient (loss after the same T1 free steps from zero, autograd through all of them; through the spikes with
the straight-through estimator of graded Sigma-Delta, deterministic rounding) are compared per parameter tensor and
over all parameters (``param='all'``); every spiking cell also with the non-spiking BPTT gradient of the same
weights (``cosine_nonspiking``, ``min_cosine_nonspiking``), the gradient spiking approximates. BPTT is computed
once per cell; the first beta runs the full free phase, later betas warm-start it from the first one's free state
(one more step). Convergence is reported, not assumed: ``last_change`` is the
free phase's largest state change in its last step (``last_change_pos``/``_neg`` the nudged phases').

Alignment records (``kind='alignment'``): spiking, pooling, param, cosine, norm_ratio (|g_EP| / |g_BPTT|), beta,
t1, t2, threshold, last_change, last_change_pos, last_change_neg, free_spikes_per_sample (spikes sent in the free
phase, all layers, per sample), free_loss, free_acc, nudge_jump_max (the largest per-sample state change from the
free to a nudged equilibrium, in units of beta; O(1) for a smooth linear response) and jump_samples (samples whose
change exceeds 2 beta: argmax switches or basin jumps, which make the finite difference of EP wrong), training
info (train_steps, train_loss_last, train_acc_last).

Activation records (``kind='activation'``), per conv layer ``conv1``/``conv2`` and cell, taken over the T2 steps
of the +beta phase (replayed step by step from the free state, on what the layers transmit, ``r``):
  forward route  = ``block.forward_drive(r_below)[0]`` = P(W * r_below + b), the pooled drive the layer receives
                   from below (``r_below`` is the input x for conv1);
  backward route = ``block.feedback(r_layer, indices)`` = W^T *' P^T(r_layer), the feedback the layer below
                   receives through this layer's transposed synapses (for conv1 that is the clamped input, which
                   ignores it: it is reported for the figure only).
  For each sample the route is summed over all its neurons, then averaged over the T2 steps: the per-sample sum.
  forward_mean / forward_std (backward_*): mean and std over the batch of the per-sample sums;
  forward_sum / backward_sum: those per-sample sums summed over the batch (= batch x mean);
  replay_diff: largest |s| difference between the replayed and the EP call's +beta end state (0 = same run);
  index_flip: max pooling only, the fraction of pooling windows whose argmax changed from one step to the next,
  averaged over the phase (the first step compared with the free equilibrium); None for avg pooling.
With this engine the backward route takes its max-unpooling indices from the same transmitted values the forward
route pooled, so the two routes are exact adjoints at every step.

Acceptance (printed as PASS/FAIL; exit code 1 on a FAIL): the non-spiking avg cell at the first beta has cosine
>= 0.99 on every tensor; and (unless ``--quick``) the dithered spiking avg cell at threshold 0.01 and beta 0.05 has
cosine >= 0.98 over all parameters and >= 0.95 on every tensor, against both the spiking and the non-spiking
BPTT gradient.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from common import Record, add_common_args, load_average, load_batch, print_table, setup_threads, stamp, write_json
from torch import Tensor

from lightning_ep import bptt_loss, equilibrium_propagation, two_conv_two_dense
from lightning_ep.dynamics import NetworkState, Relaxation, input_drive, relax
from lightning_ep.network import ConvergentNetwork

POOLINGS = ("avg", "max")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` changes the defaults of the ones left unset."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="measurement batch (quick 32, full 64)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="Sigma-Delta spike sizes of the spiking cells (0.01 0.003)")
    p.add_argument("--betas", type=float, nargs="+", default=None,
                   help="nudging strengths; the first one decides PASS/FAIL (quick 0.01 0.05, full 0.01 0.05 0.2)")
    p.add_argument("--t1", type=int, default=None, help="free steps of EP and BPTT (quick 150, full 300)")
    p.add_argument("--t2", type=int, default=None, help="nudged steps (quick 40, full 100)")
    p.add_argument("--average-last", type=int, default=None,
                   help="dithered cells: nudged steps whose states are averaged (default the last 3/5 of T2: quick "
                        "24, full 60)")
    p.add_argument("--poolings", nargs="+", choices=POOLINGS, default=list(POOLINGS))
    p.add_argument("--no-dither", action="store_true", help="skip the dithered cells")
    p.add_argument("--train-steps", type=int, default=None, help="EP training steps per pooling (quick 10, full 60)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-t1", type=int, default=40)
    p.add_argument("--train-t2", type=int, default=10)
    p.add_argument("--train-beta", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (1e-3 killed conv2 of the max net)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="dtype of the measurement (float32 breaks the beta=0.01 conv1 bias: cos 0.96)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    args.batch = args.batch or (32 if quick else 64)
    args.thresholds = args.thresholds or [0.01, 0.003]
    args.betas = args.betas or ([0.01, 0.05] if quick else [0.01, 0.05, 0.2])
    args.t1 = args.t1 or (150 if quick else 300)
    args.t2 = args.t2 or (40 if quick else 100)
    args.average_last = args.average_last or max(1, 3 * args.t2 // 5)
    args.train_steps = args.train_steps if args.train_steps is not None else (10 if quick else 60)
    args.dtype = args.dtype or "float64"
    return args


def train(pooling: str, args: argparse.Namespace) -> tuple[ConvergentNetwork, dict[str, Any]]:
    """A non-spiking net trained for ``args.train_steps`` EP steps (Adam, async) on FashionMNIST train batches."""
    torch.manual_seed(args.seed)
    net = two_conv_two_dense(pooling=pooling, hidden=args.hidden, threshold=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    acc = loss = float("nan")
    start = time.perf_counter()
    for k in range(args.train_steps):
        x, y, _ = load_batch(args.train_batch, offset=k * args.train_batch, data_dir=args.data_dir)
        res = equilibrium_propagation(net, x, y, beta=args.train_beta, t1=args.train_t1, t2=args.train_t2,
                                      update="async")
        opt.zero_grad()
        res.surrogate.backward()
        opt.step()
        loss, acc = float(res.loss), float((res.logits.argmax(1) == y).float().mean())
    info = {"train_steps": args.train_steps, "train_loss_last": loss, "train_acc_last": acc,
            "train_s": time.perf_counter() - start}
    print(f"trained {pooling}: {args.train_steps} EP steps, last batch loss {loss:.4f} acc {acc:.3f} "
          f"({info['train_s']:.1f} s)")
    return net, info


def grads(net: ConvergentNetwork) -> dict[str, Tensor]:
    """Copies of the parameter gradients, by name."""
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def compare(g_ep: dict[str, Tensor], g_bptt: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Cosine and norm ratio per tensor and over all parameters together (``param='all'``)."""
    rows = []
    pairs = [(n, g_ep[n].flatten(), g_bptt[n].flatten()) for n in g_bptt]
    pairs.append(("all", torch.cat([a for _, a, _ in pairs]), torch.cat([b for _, _, b in pairs])))
    for name, a, b in pairs:
        cos = float(F.cosine_similarity(a, b, dim=0, eps=1e-30))
        ratio = float(a.norm() / b.norm()) if float(b.norm()) > 0 else math.nan
        rows.append({"param": name, "cosine": cos, "norm_ratio": ratio})
    return rows


def route_activations(
    net: ConvergentNetwork, x: Tensor, y: Tensor, free: NetworkState, beta: float, t2: int
) -> tuple[list[dict[str, Any]], NetworkState]:
    """Replay the +beta phase step by step; per conv layer, the per-sample forward and backward route sums averaged
    over the steps, and the max-pooling argmax flips. Returns the records and the final state."""
    conv_ids = [i for i, b in enumerate(net.blocks) if hasattr(b, "pooling")]
    x_drive = input_drive(net, x)
    fwd = {i: torch.zeros(x.shape[0], dtype=x.dtype) for i in conv_ids}
    bwd = {i: torch.zeros(x.shape[0], dtype=x.dtype) for i in conv_ids}
    flips: dict[int, list[float]] = {i: [] for i in conv_ids}

    def indices_of(state: NetworkState) -> dict[int, Tensor | None]:
        return {i: net.blocks[i].forward_drive(x if i == 0 else state.r[i - 1])[1] for i in conv_ids}

    state = free
    with torch.no_grad():
        prev_idx = indices_of(state)
        for _ in range(t2):
            state = relax(net, x_drive, state, 1, beta, y, update="async").state
            for i in conv_ids:
                block = net.blocks[i]
                drive, idx = block.forward_drive(x if i == 0 else state.r[i - 1])
                fwd[i] += drive.flatten(1).sum(1)
                bwd[i] += block.feedback(state.r[i], idx).flatten(1).sum(1)
                if idx is not None and prev_idx[i] is not None:
                    flips[i].append(float((idx != prev_idx[i]).double().mean()))
                prev_idx[i] = idx
    records = []
    for i in conv_ids:
        f, b = fwd[i] / t2, bwd[i] / t2
        records.append({
            "layer": f"conv{i + 1}",
            "forward_sum": float(f.sum()), "backward_sum": float(b.sum()),
            "forward_mean": float(f.mean()), "forward_std": float(f.std()),
            "backward_mean": float(b.mean()), "backward_std": float(b.std()),
            "index_flip": sum(flips[i]) / len(flips[i]) if flips[i] else None,
        })
    return records, state


def nudge_jumps(free: NetworkState, nudged: list[NetworkState], beta: float) -> Tensor:
    """Per sample, the largest state change from the free to a nudged equilibrium, over layers and phases, in
    units of beta. Smooth (linear-response) dynamics give O(1); a jump to another argmax or basin gives more."""
    per_phase = [
        torch.stack([(a - b).flatten(1).abs().amax(1) for a, b in zip(st.s, free.s, strict=True)]).amax(0)
        for st in nudged
    ]
    return torch.stack(per_phase).amax(0) / beta


def measure_cell(
    net: ConvergentNetwork, x: Tensor, y: Tensor, threshold: float, pooling: str, args: argparse.Namespace,
    dither: bool = False, g_bptt: dict[str, Tensor] | None = None, g_nonspiking: dict[str, Tensor] | None = None,
) -> tuple[list[Record], list[Record], dict[str, Tensor]]:
    """The BPTT gradient (unless given), then per beta the EP gradient, its comparison with BPTT (and with the
    non-spiking BPTT gradient ``g_nonspiking`` when given) and, without dithering, the +beta route activations.
    Returns the alignment and activation records and the BPTT gradient."""
    net.threshold = threshold
    spiking = threshold > 0.0
    label = f"{f'spiking {threshold:g}' if spiking else 'non-spiking'}{' dithered' if dither else ''} {pooling}"
    start = time.perf_counter()
    if g_bptt is None:
        net.zero_grad()
        bptt_loss(net, x, y, t1=args.t1, update="async").loss.backward()
        g_bptt = grads(net)
    align: list[Record] = []
    acts: list[Record] = []
    free: Relaxation | None = None
    for beta in args.betas:
        net.zero_grad()
        generator = torch.Generator().manual_seed(args.seed) if dither else None
        # the first beta runs the whole free phase; later ones warm-start from its end (one more free step)
        res = equilibrium_propagation(net, x, y, beta=beta, t1=args.t1 if free is None else 1, t2=args.t2,
                                      estimator="symmetric", update="async",
                                      start=None if free is None else free.state, dither=generator,
                                      average_last=args.average_last if dither else 0)
        res.surrogate.backward()
        g_ep = grads(net)
        net.zero_grad()
        free = free or res.phases["free"]
        cell = {"spiking": spiking, "pooling": pooling, "threshold": threshold, "dither": dither, "beta": beta,
                "t1": args.t1, "t2": args.t2, "average_last": args.average_last if dither else 0,
                "last_change": free.last_change}
        extra = {
            "last_change_pos": res.phases["positive"].last_change,
            "last_change_neg": res.phases["negative"].last_change,
            "free_spikes_per_sample": float(sum(free.spikes)) / x.shape[0],
            "nudged_spikes_per_sample": float(sum(res.phases["positive"].spikes)) / x.shape[0],
            "free_loss": float(res.loss),
            "free_acc": float((res.logits.argmax(1) == y).float().mean()),
        }
        jumps = nudge_jumps(res.free_state, [res.phases["positive"].state, res.phases["negative"].state], beta)
        extra["nudge_jump_max"] = float(jumps.max())
        extra["jump_samples"] = int((jumps > 2.0).sum())
        rows = compare(g_ep, g_bptt)
        to_nonspiking = rows if g_nonspiking is None else compare(g_ep, g_nonspiking)
        for row, other in zip(rows, to_nonspiking, strict=True):
            row["cosine_nonspiking"], row["norm_ratio_nonspiking"] = other["cosine"], other["norm_ratio"]
        align += [{"kind": "alignment", **cell, **row, **extra} for row in rows]
        if not dither:  # a deterministic replay of the +beta phase (a dithered one would need its noise stream)
            routes, replayed = route_activations(net, x, y, res.free_state, beta, args.t2)
            diff = max(float((a - b).abs().max())
                       for a, b in zip(replayed.s, res.phases["positive"].state.s, strict=True))
            acts += [{"kind": "activation", **cell, **row, "replay_diff": diff} for row in routes]
        print(f"  {label:29s} beta {beta:<5g}: free last_change {free.last_change:.2e}, +beta last_change "
              f"{extra['last_change_pos']:.2e}, cos(all) {rows[-1]['cosine']:.4f} (non-spiking BPTT "
              f"{rows[-1]['cosine_nonspiking']:.4f}), min cos {min(r['cosine'] for r in rows):.4f} "
              f"({min(r['cosine_nonspiking'] for r in rows):.4f}), norm ratio {rows[-1]['norm_ratio']:.3f}, "
              f"jump samples {extra['jump_samples']}")
    print(f"  {label} measured in {time.perf_counter() - start:.1f} s")
    return align, acts, g_bptt


def verdicts(align: list[Record], args: argparse.Namespace) -> list[tuple[bool, str]]:
    """The acceptance checks (see the module docstring): (passed, line to print) each."""
    beta0 = args.betas[0]
    target = [r for r in align if not r["spiking"] and r["pooling"] == "avg" and r["param"] != "all"
              and r["beta"] == beta0]
    out = []
    if target:
        worst = min(r["cosine"] for r in target)
        out.append((worst >= 0.99, f"non-spiking avg pooling at beta {beta0:g}, min cosine over tensors {worst:.5f} "
                                   "(criterion >= 0.99)"))
    spiking = [r for r in align if r["dither"] and r["pooling"] == "avg" and r["threshold"] == 0.01
               and r["beta"] == 0.05]
    if not args.quick and spiking:
        total = next(r for r in spiking if r["param"] == "all")
        tensors = [r for r in spiking if r["param"] != "all"]
        cos = min(total["cosine"], total["cosine_nonspiking"])
        worst = min(min(r["cosine"], r["cosine_nonspiking"]) for r in tensors)
        out.append((cos >= 0.98 and worst >= 0.95,
                    f"dithered spiking avg pooling at threshold 0.01, beta 0.05: cosine over all parameters "
                    f"{total['cosine']:.4f} to spiking BPTT, {total['cosine_nonspiking']:.4f} to non-spiking BPTT "
                    f"(criterion >= 0.98); min over tensors {worst:.4f} (criterion >= 0.95)"))
    return out


def main(argv: list[str] | None = None) -> int:
    """Train, measure the cells, print the tables and the PASS/FAIL lines, write the JSON."""
    args = parse_args(argv)
    setup_threads(args.threads)
    load_start = load_average()
    dtype = getattr(torch, args.dtype)
    x, y, source = load_batch(args.batch, offset=0, split="test", data_dir=args.data_dir)
    x = x.to(dtype)
    print(f"alignment: 2C2FC hidden {args.hidden}, batch {args.batch} ({source}), {args.dtype}, async updates, "
          f"betas {args.betas}, T1 {args.t1}, T2 {args.t2}, spiking thresholds {args.thresholds} (dithered: "
          f"{'no' if args.no_dither else f'average of the last {args.average_last} steps'}); load {load_start}")
    align: list[Record] = []
    acts: list[Record] = []
    for pooling in args.poolings:
        net, info = train(pooling, args)
        net = net.to(dtype)
        g_nonspiking = None
        for threshold in (0.0, *args.thresholds):
            a, b, g = measure_cell(net, x, y, threshold, pooling, args, g_nonspiking=g_nonspiking)
            g_nonspiking = g_nonspiking or g
            if threshold > 0.0 and not args.no_dither:
                a2, _, _ = measure_cell(net, x, y, threshold, pooling, args, True, g, g_nonspiking)
                a += a2
            align += [{**r, **info} for r in a]
            acts += [{**r, **info} for r in b]

    kinds = [(0.0, False)] + [(t, d) for t in args.thresholds for d in ((False,) if args.no_dither else (False, True))]
    cells = [(t, d, p, b) for b in args.betas for t, d in kinds for p in args.poolings]
    names = [f"{f'spk{t:g}' if t else 'nonspk'}{'-dith' if d else ''}-{p}@{b:g}" for t, d, p, b in cells]
    params = list(dict.fromkeys(r["param"] for r in align))
    pivot = []
    for param in params:
        row: dict[str, Any] = {"param": param}
        for (t, d, p, b), name in zip(cells, names, strict=True):
            hit = [r for r in align if (r["param"], r["threshold"], r["dither"], r["pooling"], r["beta"]) ==
                   (param, t, d, p, b)]
            row[name] = hit[0]["cosine"] if hit else None
        pivot.append(row)
    print_table(pivot, ["param", *names], title="cosine(EP, BPTT) per parameter tensor (cell@beta)")
    summary = [r for r in align if r["param"] == "all"]
    for r in summary:
        same = [q for q in align if q["param"] != "all" and
                (q["threshold"], q["dither"], q["pooling"], q["beta"]) ==
                (r["threshold"], r["dither"], r["pooling"], r["beta"])]
        r["min_cosine"] = min(q["cosine"] for q in same)
        r["min_cosine_nonspiking"] = min(q["cosine_nonspiking"] for q in same)
    print_table(summary, ["spiking", "dither", "pooling", "threshold", "beta", "last_change", "last_change_pos",
                          "cosine", "min_cosine", "cosine_nonspiking", "min_cosine_nonspiking", "norm_ratio",
                          "jump_samples", "free_spikes_per_sample", "nudged_spikes_per_sample", "free_acc"],
                title="per cell: convergence (max |s_t - s_t-1| of the last step) and all-parameter alignment "
                      "(to spiking BPTT; to non-spiking BPTT)")
    print_table(acts, ["spiking", "threshold", "pooling", "beta", "layer", "forward_mean", "forward_std",
                       "backward_mean", "backward_std", "forward_sum", "backward_sum", "index_flip"],
                title="+beta phase route activations (per-sample sums, mean/std over the batch)")

    checks = verdicts(align, args)
    for passed, line in checks:
        print(f"\n{'PASS' if passed else 'FAIL'}: {line}")
    write_json("alignment", stamp(align + acts, load_avg_start=load_start, load_avg_end=load_average(),
                                  data=source, dtype=args.dtype, hidden=args.hidden, batch=args.batch),
               args.out, args.quick)
    return 0 if all(passed for passed, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
