"""EP-vs-BPTT gradient alignment and the forward/backward route activations of the conv layers (paper Fig. 2/3).

Network: 2C2FC (``two_conv_two_dense``) at MNIST shape 1x28x28, hidden width ``--hidden`` (256), mse output.
Cells: {non-spiking (threshold 0), spiking (graded Sigma-Delta, threshold ``--threshold`` = 0.01)} x {max, avg}.

Weights: for each pooling kind one network is trained a little (``--train-steps`` EP steps, Adam, non-spiking,
async updates, FashionMNIST train batches) from the same seed, so that the states are not trivial. Both the
non-spiking and the spiking cell of that pooling use those same weights (spiking is the threshold switch only);
max and avg therefore differ in their weights as well as in their pooling. All four cells are measured on the
same held-out batch (FashionMNIST test[0:batch]) in ``--dtype`` (float64), with asynchronous (even/odd) updates.

Per cell: the EP gradient (symmetric estimator, +-beta, T1 free and T2 nudged steps) and the BPTT gradient
(loss after the same T1 free steps, autograd through all of them; through the spikes with the straight-through
estimator of graded Sigma-Delta) are compared per parameter tensor and over all parameters (``param='all'``).
Convergence is reported, not assumed: ``last_change`` is the free phase's largest state change in its last step
(``last_change_pos`` the +beta phase's).

Alignment records (``kind='alignment'``): spiking, pooling, param, cosine, norm_ratio (|g_EP| / |g_BPTT|), beta,
t1, t2, threshold, last_change, last_change_pos, free_spikes_per_sample (spikes sent in the free phase, all layers).

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
  index_flip: max pooling only, the fraction of pooling windows whose argmax changed from one step to the next,
  averaged over the phase (the first step compared with the free equilibrium); None for avg pooling.
With this engine the backward route takes its max-unpooling indices from the same transmitted values the forward
route pooled, so the two routes are exact adjoints at every step.

Acceptance (printed as PASS/FAIL): in ``--quick`` mode the non-spiking avg cell has cosine >= 0.99 on every tensor.
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
from lightning_ep.dynamics import NetworkState, input_drive, relax
from lightning_ep.network import ConvergentNetwork

POOLINGS = ("avg", "max")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` changes the defaults of the ones left unset."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="measurement batch (quick 32, full 64)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.01, help="Sigma-Delta spike size of the spiking cells")
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--t1", type=int, default=None, help="free steps of EP and BPTT (quick 100, full 250)")
    p.add_argument("--t2", type=int, default=None, help="nudged steps (quick 40, full 80)")
    p.add_argument("--train-steps", type=int, default=None, help="EP training steps per pooling (quick 15, full 60)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-t1", type=int, default=40)
    p.add_argument("--train-t2", type=int, default=10)
    p.add_argument("--train-beta", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="dtype of the measurement")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    args.batch = args.batch or (32 if quick else 64)
    args.t1 = args.t1 or (100 if quick else 250)
    args.t2 = args.t2 or (40 if quick else 80)
    args.train_steps = args.train_steps if args.train_steps is not None else (15 if quick else 60)
    return args


def train(pooling: str, args: argparse.Namespace) -> tuple[ConvergentNetwork, dict[str, Any]]:
    """A non-spiking net trained for ``args.train_steps`` EP steps (Adam, async) on FashionMNIST train batches."""
    torch.manual_seed(args.seed)
    net = two_conv_two_dense(pooling=pooling, hidden=args.hidden, threshold=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    acc = loss = float("nan")
    start = time.perf_counter()
    for k in range(args.train_steps):
        x, y, _ = load_batch(args.train_batch, offset=k * args.train_batch)
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


def measure_cell(
    net: ConvergentNetwork, x: Tensor, y: Tensor, spiking: bool, pooling: str, args: argparse.Namespace
) -> tuple[list[Record], list[Record]]:
    """EP and BPTT gradients of one cell, their comparison, and the route activations."""
    threshold = args.threshold if spiking else 0.0
    net.threshold = threshold
    cell = {"spiking": spiking, "pooling": pooling, "threshold": threshold, "beta": args.beta, "t1": args.t1,
            "t2": args.t2}
    start = time.perf_counter()
    net.zero_grad()
    res = equilibrium_propagation(net, x, y, beta=args.beta, t1=args.t1, t2=args.t2, estimator="symmetric",
                                  update="async")
    res.surrogate.backward()
    g_ep = grads(net)
    net.zero_grad()
    bp = bptt_loss(net, x, y, t1=args.t1, update="async")
    bp.loss.backward()
    g_bptt = grads(net)
    net.zero_grad()
    free = res.phases["free"]
    conv = {
        "last_change": free.last_change,
        "last_change_pos": res.phases["positive"].last_change,
        "last_change_neg": res.phases["negative"].last_change,
        "free_spikes_per_sample": float(sum(free.spikes)) / x.shape[0],
        "free_loss": float(res.loss),
        "free_acc": float((res.logits.argmax(1) == y).float().mean()),
    }
    align = [{"kind": "alignment", **cell, **row, **conv} for row in compare(g_ep, g_bptt)]
    acts, replayed = route_activations(net, x, y, res.free_state, args.beta, args.t2)
    same = max(float((a - b).abs().max()) for a, b in zip(replayed.s, res.phases["positive"].state.s, strict=True))
    act = [{"kind": "activation", **cell, **row, "last_change": free.last_change, "replay_diff": same}
           for row in acts]
    print(f"  {'spiking' if spiking else 'non-spiking':11s} {pooling}: free last_change {free.last_change:.2e}, "
          f"+beta last_change {conv['last_change_pos']:.2e}, cos(all) {align[-1]['cosine']:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    return align, act


def main(argv: list[str] | None = None) -> int:
    """Train, measure the four cells, print the tables and the PASS/FAIL line, write the JSON."""
    args = parse_args(argv)
    setup_threads(args.threads)
    load_start = load_average()
    dtype = getattr(torch, args.dtype)
    x, y, source = load_batch(args.batch, offset=0, split="test")
    x = x.to(dtype)
    print(f"alignment: 2C2FC hidden {args.hidden}, batch {args.batch} ({source}), {args.dtype}, async updates, "
          f"beta {args.beta}, T1 {args.t1}, T2 {args.t2}, spiking threshold {args.threshold}; load {load_start}")
    align: list[Record] = []
    acts: list[Record] = []
    for pooling in POOLINGS:
        net, info = train(pooling, args)
        net = net.to(dtype)
        for spiking in (False, True):
            a, b = measure_cell(net, x, y, spiking, pooling, args)
            align += [{**r, **info} for r in a]
            acts += [{**r, **info} for r in b]

    cells = [(s, p) for s in (False, True) for p in POOLINGS]
    names = [f"{'spk' if s else 'nonspk'}-{p}" for s, p in cells]
    params = list(dict.fromkeys(r["param"] for r in align))
    pivot = []
    for param in params:
        row: dict[str, Any] = {"param": param}
        for (s, p), name in zip(cells, names, strict=True):
            hit = [r for r in align if r["param"] == param and r["spiking"] == s and r["pooling"] == p]
            row[name] = hit[0]["cosine"] if hit else None
        pivot.append(row)
    print_table(pivot, ["param", *names], title="cosine(EP, BPTT) per parameter tensor")
    summary = [r for r in align if r["param"] == "all"]
    for r in summary:
        r["min_cosine"] = min(q["cosine"] for q in align if q["param"] != "all" and q["spiking"] == r["spiking"]
                              and q["pooling"] == r["pooling"])
    print_table(summary, ["spiking", "pooling", "threshold", "last_change", "last_change_pos", "cosine",
                          "min_cosine", "norm_ratio", "free_spikes_per_sample", "free_acc"],
                title="per cell: convergence and all-parameter alignment")
    print_table(acts, ["spiking", "pooling", "layer", "forward_mean", "forward_std", "backward_mean", "backward_std",
                       "forward_sum", "backward_sum", "index_flip"],
                title="+beta phase route activations (per-sample sums, mean/std over the batch)")

    target = [r for r in align if not r["spiking"] and r["pooling"] == "avg" and r["param"] != "all"]
    worst = min(r["cosine"] for r in target)
    verdict = "PASS" if worst >= 0.99 else "FAIL"
    print(f"\n{verdict}: non-spiking avg pooling, min cosine over tensors {worst:.5f} (criterion >= 0.99)")
    write_json("alignment", stamp(align + acts, load_avg_start=load_start, load_avg_end=load_average(),
                                  data=source, dtype=args.dtype, hidden=args.hidden, batch=args.batch),
               args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
