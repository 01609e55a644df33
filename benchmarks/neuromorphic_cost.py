"""Neuromorphic cost of trained networks on the FashionMNIST test set: test accuracy against spikes, SynOps, dense
MACs and latency per inference (the free phase), and the accuracy when inference is cut at 5, 10, 20, 30 steps.

    python benchmarks/neuromorphic_cost.py --checkpoint theta0.003.ckpt theta0.01.ckpt theta0.03.ckpt
    python benchmarks/neuromorphic_cost.py --checkpoint a.ckpt --thresholds 0.003 0.01 0.03   # same weights, other θ
    python benchmarks/neuromorphic_cost.py --quick   # trains a tiny network a few steps itself; 256 test images

What is counted is defined in ``lightning_ep.neuromorphic`` (SynOps: each spike times the synapses it reaches
forward and through the feedback; dense MACs: every synapse every step both ways; the image's input drive, the same
in both, apart). Each checkpoint's free phase runs with its own settings (``eval_t1`` or ``t1`` steps, start, update,
omega, tol) and a ``StepTrace``, long enough for every cut; the cost, accuracy and latency are those of its own step
count, the cuts' accuracies those of the same run stopped earlier.

Writes ``benchmarks/results/neuromorphic_cost.json`` (``--quick``: ``benchmarks/results/quick/``), prints a
README-ready markdown table, and plots accuracy against SynOps per inference (a curve through the cuts for each
network) to ``docs/neuromorphic_cost.png`` (``--quick``: next to its JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import QUICK_DIR, Record, add_common_args, load_batch, print_table, setup_threads, stamp, write_json  # noqa: E402

from lightning_ep.callbacks._logging import new_figure  # noqa: E402
from lightning_ep.module import EPLightningModule  # noqa: E402
from lightning_ep.neuromorphic import accuracy_at_steps, trace_cost, traced_free_phase  # noqa: E402

NAME = "neuromorphic_cost"
CUTS = (5, 10, 20, 30)
QUICK_THRESHOLDS = (0.003, 0.01, 0.03)
PLOT = ROOT / "docs" / f"{NAME}.png"


def train_tiny(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int = 64) -> EPLightningModule:
    """A small spiking avg-pool network (conv 8, dense 64, θ = 0.01, feed-forward start) trained by EP for
    ``steps`` batches: the ``--quick`` stand-in for a trained checkpoint."""
    torch.manual_seed(0)
    module = EPLightningModule(channels=(8,), kernel_size=5, hidden=(64,), pooling="avg", threshold=0.01, t1=12,
                               t2=6, beta=0.2, start="feedforward", lr=2e-3, scheduler="none")
    opt = torch.optim.Adam(module.net.parameters(), lr=2e-3)
    for i in range(steps):
        lo = (i * batch_size) % len(x)
        result = module.run_ep(x[lo : lo + batch_size], y[lo : lo + batch_size])
        opt.zero_grad()
        result.surrogate.backward()
        opt.step()
    return module


@torch.no_grad()
def measure(module: EPLightningModule, x: torch.Tensor, y: torch.Tensor, batch_size: int, cuts: Sequence[int],
            steps: int | None = None) -> Record:
    """Accuracy, cost per inference and latency of the module's free phase on ``x``, ``y``, and the accuracy and
    SynOps of the same runs cut after each of ``cuts`` steps."""
    hp, net = module.hparams, module.net.eval()
    t_eval = steps or hp.eval_t1 or hp.t1
    t_run = max(t_eval, *cuts)
    n_layers = len(net.blocks)
    spikes, synops, dense = [0.0] * n_layers, [0.0] * n_layers, [0.0] * n_layers
    events, event_synops = [0.0] * n_layers, [0.0] * n_layers
    correct = {t: 0.0 for t in (t_eval, *cuts)}
    synops_at = {t: 0.0 for t in cuts}
    event_synops_at = {t: 0.0 for t in cuts}
    inputs, latencies = 0.0, []
    start = time.perf_counter()
    for lo in range(0, len(x), batch_size):
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
        _, trace = traced_free_phase(net, xb, t_run, hp["update"], hp.tol, hp.start, hp.omega)
        cost = trace_cost(net, trace, t_eval)
        assert cost.events is not None and cost.event_synops is not None and cost.latency is not None
        for totals, values in ((spikes, cost.spikes), (synops, cost.synops), (dense, cost.dense_macs),
                               (events, cost.events), (event_synops, cost.event_synops)):
            for layer, value in enumerate(values):
                totals[layer] += value
        inputs += cost.input_macs
        latencies.append(cost.latency.cpu())
        for t, acc in accuracy_at_steps(trace, yb, list(correct)).items():
            correct[t] += acc * len(yb)
        for t in cuts:
            cut = trace_cost(net, trace, t)
            synops_at[t] += cut.total_synops
            event_synops_at[t] += sum(cut.event_synops or [])
    n = len(x)
    latency = torch.cat(latencies).double()
    record: Record = {
        "threshold": net.threshold, "pooling": hp.pooling, "channels": list(hp.channels), "hidden": list(hp.hidden),
        "start": hp.start, "update": hp["update"], "omega": hp.omega, "tol": hp.tol, "steps": t_eval,
        "samples": n, "accuracy": correct[t_eval] / n,
        "spikes_per_inference": sum(spikes) / n, "synops_per_inference": sum(synops) / n,
        "dense_macs_per_inference": sum(dense) / n, "synops_over_dense": sum(synops) / sum(dense),
        "events_per_inference": sum(events) / n, "event_synops_per_inference": sum(event_synops) / n,
        "event_synops_over_dense": sum(event_synops) / sum(dense),
        "input_macs_per_inference": inputs / n,
        "spikes_per_layer": [v / n for v in spikes], "synops_per_layer": [v / n for v in synops],
        "latency_mean": float(latency.mean()), "latency_median": float(latency.median()),
        "latency_p90": float(torch.quantile(latency, 0.9)),
        "measure_s": round(time.perf_counter() - start, 2),
    }
    for t in cuts:
        record[f"acc_at_{t}"] = correct[t] / n
        record[f"synops_at_{t}"] = synops_at[t] / n
        record[f"event_synops_at_{t}"] = event_synops_at[t] / n
    return record


def markdown_table(records: Sequence[Record], cuts: Sequence[int]) -> str:
    """The README table: one row per network."""
    head = ["network", "θ", "T", "test acc", "spikes / inf.", "SynOps / inf.", "events / inf.", "event SynOps / inf.",
            "dense MACs / inf.", "SynOps / MACs", "event SynOps / MACs", "latency (mean, p90)",
            *(f"acc @ {t}" for t in cuts)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in records:
        cells = [r["label"], f"{r['threshold']:g}", str(r["steps"]), f"{100 * r['accuracy']:.2f} %",
                 _si(r["spikes_per_inference"]), _si(r["synops_per_inference"]), _si(r["events_per_inference"]),
                 _si(r["event_synops_per_inference"]), _si(r["dense_macs_per_inference"]),
                 f"{r['synops_over_dense']:.3f}", f"{r['event_synops_over_dense']:.3f}",
                 f"{r['latency_mean']:.1f}, {r['latency_p90']:.0f}",
                 *(f"{100 * r[f'acc_at_{t}']:.1f} %" for t in cuts)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _si(value: float) -> str:
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def plot(records: Sequence[Record], cuts: Sequence[int], path: Path) -> Path:
    """Accuracy against SynOps per inference (left: unit spikes; right: graded spikes as one event each): each
    network's cuts joined by a line, its own step count starred, the dense network's MACs dotted."""
    fig = new_figure(11, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, prefix, name in ((axes[0], "synops", "SynOps (each unit spike)"),
                             (axes[1], "event_synops", "event SynOps (each graded spike once)")):
        for i, r in enumerate(records):
            points = sorted((r[f"{prefix}_at_{t}"], r[f"acc_at_{t}"], t) for t in cuts)
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color=f"C{i}",
                    label=f"{r['label']}: θ={r['threshold']:g}")
            for synops, acc, t in points:
                ax.annotate(str(t), (synops, 100 * acc), textcoords="offset points", xytext=(3, -9), fontsize=7)
            ax.plot([r[f"{prefix}_per_inference"]], [100 * r["accuracy"]], "*", color=f"C{i}", markersize=11)
            ax.axvline(r["dense_macs_per_inference"], color=f"C{i}", linestyle=":", linewidth=1)
        ax.set(xscale="log", xlabel=f"{name} per inference (log)", title=name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("accuracy against synaptic operations (labels: steps run; ★ each network's own T; "
                 "dotted: dense MACs at T)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> list[Record]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--checkpoint", type=Path, nargs="+", default=[], help="EPLightningModule checkpoints")
    parser.add_argument("--label", nargs="+", default=None, help="a name per checkpoint (default: the file stem)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None,
                        help="run each network at these Sigma-Delta thresholds (default: its own; --quick: "
                             f"{' '.join(map(str, QUICK_THRESHOLDS))})")
    parser.add_argument("--samples", type=int, default=None, help="test images (default 10000; --quick 256)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--cuts", type=int, nargs="+", default=list(CUTS), help="steps to cut inference at")
    parser.add_argument("--steps", type=int, default=None, help="free-phase steps (default: each module's own)")
    parser.add_argument("--train-steps", type=int, default=30, help="--quick without checkpoints: EP training steps")
    parser.add_argument("--plot", type=Path, default=None, help=f"the figure (default {PLOT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.quick:
        parser.error("pass --checkpoint (trained EPLightningModule checkpoints) or --quick")
    if args.label is not None and len(args.label) != len(args.checkpoint):
        parser.error("--label needs one name per --checkpoint")
    setup_threads(args.threads)
    samples = args.samples or (256 if args.quick else 10_000)
    x, y, source = load_batch(samples, split="test", data_dir=args.data_dir, allow_synthetic=args.quick)
    networks: list[tuple[str, EPLightningModule, Path | None]] = []
    for i, path in enumerate(args.checkpoint):
        module = EPLightningModule.load_from_checkpoint(path, map_location="cpu")
        networks.append((args.label[i] if args.label else path.stem, module, path))
    if not networks:
        xt, yt, train_source = load_batch(64 * args.train_steps, split="train", data_dir=args.data_dir,
                                          allow_synthetic=True)
        networks.append((f"tiny EP net, {args.train_steps} steps", train_tiny(xt, yt, args.train_steps), None))
        source = f"{source}; trained on {train_source}"
    thresholds = args.thresholds or (list(QUICK_THRESHOLDS) if args.quick and not args.checkpoint else None)
    records: list[Record] = []
    for label, module, path in networks:
        own = module.net.threshold
        for threshold in thresholds or [own]:
            module.net.threshold = threshold
            record = measure(module, x, y, args.batch_size, args.cuts, args.steps)
            record["label"] = label if threshold == own else f"{label} (trained at θ={own:g})"
            record["trained_threshold"] = own
            record["checkpoint"] = None if path is None else str(path)
            records.append(record)
            print(f"{record['label']}, θ={threshold:g}: accuracy {record['accuracy']:.4f}, "
                  f"SynOps {record['synops_per_inference']:.4g}, latency {record['latency_mean']:.2f}", flush=True)
        module.net.threshold = own
    records = stamp(records, data=source, quick=args.quick)
    print_table(records, ["label", "threshold", "steps", "accuracy", "spikes_per_inference", "synops_per_inference",
                          "event_synops_per_inference", "dense_macs_per_inference", "synops_over_dense",
                          "latency_mean"])
    print("\n" + markdown_table(records, args.cuts) + "\n")
    write_json(NAME, records, args.out, args.quick)
    plot(records, args.cuts, args.plot or (QUICK_DIR / f"{NAME}.png" if args.quick else PLOT))
    return records


if __name__ == "__main__":
    main()
