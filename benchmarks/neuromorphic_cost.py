"""Neuromorphic cost of trained networks on the FashionMNIST test set: test accuracy against spikes, SynOps, dense
MACs and latency per inference (the free phase), and the accuracy when inference is cut at 5, 10, 20, 30 steps.

    python benchmarks/neuromorphic_cost.py --checkpoint theta0.003.ckpt theta0.01.ckpt theta0.03.ckpt
    python benchmarks/neuromorphic_cost.py --checkpoint a.ckpt --thresholds 0.003 0.01 0.03   # same weights, other θ
    python benchmarks/neuromorphic_cost.py --checkpoint a.ckpt --csnn-checkpoint csnn.ckpt   # + snnTorch's conv SNN
    python benchmarks/neuromorphic_cost.py --quick   # trains tiny networks a few steps itself; 256 test images

What is counted is defined in ``lightning_ep.neuromorphic`` (SynOps: each spike times the synapses it reaches
forward and through the feedback; dense MACs: every synapse every step both ways; the image's input drive, the same
in both, apart). Each checkpoint's free phase runs with its own settings (``eval_t1`` or ``t1`` steps, start, update,
omega, tol) and a ``StepTrace``, long enough for every cut; the cost, accuracy and latency are those of its own step
count, the cuts' accuracies those of the same run stopped earlier. snnTorch's conv SNN baseline
(``--csnn-checkpoint``, ``SnnTorchCSNN``) is counted the same way by ``lightning_ep.baselines.csnn_cost``: forward
SynOps only (it has no feedback), unit spikes (events = spikes), its ``num_steps`` presentation steps; its cuts
beyond ``num_steps`` are not run.

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

from lightning_ep.baselines import SnnTorchCSNN  # noqa: E402
from lightning_ep.baselines.csnn_cost import csnn_accuracy_at_steps, csnn_cost  # noqa: E402
from lightning_ep.callbacks._logging import new_figure  # noqa: E402
from lightning_ep.config import EPConfig, NetworkConfig, PhasesConfig  # noqa: E402
from lightning_ep.module import EPLightningModule  # noqa: E402
from lightning_ep.neuromorphic import (  # noqa: E402
    NeuromorphicCost,
    accuracy_at_steps,
    trace_cost,
    traced_free_phase,
)
from lightning_ep.optimization import OptimConfig  # noqa: E402

NAME = "neuromorphic_cost"
CUTS = (5, 10, 20, 30)
QUICK_THRESHOLDS = (0.003, 0.01, 0.03)
PLOT = ROOT / "docs" / f"{NAME}.png"


def train_tiny(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int = 64) -> EPLightningModule:
    """A small spiking avg-pool network (conv 8, dense 64, θ = 0.01, feed-forward start) trained by EP for
    ``steps`` batches: the ``--quick`` stand-in for a trained checkpoint."""
    torch.manual_seed(0)
    module = EPLightningModule(network=NetworkConfig(channels=(8,), kernel_size=5, hidden=(64,), threshold=0.01),
                               phases=PhasesConfig(t1=12, t2=6, start="feedforward"), ep=EPConfig(beta=0.2),
                               curvature=None, optim=OptimConfig(lr=2e-3, scheduler="none"))
    opt = torch.optim.Adam(module.net.parameters(), lr=2e-3)
    for i in range(steps):
        lo = (i * batch_size) % len(x)
        result = module.run_ep(x[lo : lo + batch_size], y[lo : lo + batch_size])
        opt.zero_grad()
        result.surrogate.backward()
        opt.step()
    return module


def train_tiny_csnn(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int = 64) -> SnnTorchCSNN:
    """A small snnTorch conv SNN (conv 8, dense 64, 10 steps) trained by BPTT for ``steps`` batches: the
    ``--quick`` stand-in for a trained baseline checkpoint."""
    torch.manual_seed(0)
    module = SnnTorchCSNN(channels=(8,), kernel_size=5, hidden=(64,), num_steps=10,
                          optim=OptimConfig(scheduler="none"))
    opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    for i in range(steps):
        lo = (i * batch_size) % len(x)
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
        opt.zero_grad()
        module.loss(module.simulate(xb), yb).backward()
        opt.step()
    return module


class CostTotals:
    """One network's inference cost summed over the test batches: per layer, with its latencies, its correct answers
    at its own step count and at each cut, and the SynOps of each cut; ``record`` turns them into per-inference
    figures."""

    def __init__(self, steps: int, cuts: Sequence[int], run_cuts: Sequence[int] | None = None) -> None:
        """``cuts``: the cuts the record reports; ``run_cuts``: those actually measured (default all; the others
        are reported as ``None``)."""
        run_cuts = list(cuts) if run_cuts is None else list(run_cuts)
        self.steps, self.cuts = steps, list(cuts)
        self.layers: dict[str, list[float]] = {}
        self.inputs, self.latencies = 0.0, []
        self.correct = dict.fromkeys((steps, *run_cuts), 0.0)
        self.synops_at, self.event_synops_at = dict.fromkeys(run_cuts, 0.0), dict.fromkeys(run_cuts, 0.0)
        self.start = time.perf_counter()

    def add(self, cost: NeuromorphicCost, accuracies: dict[int, float], samples: int,
            cut_costs: dict[int, NeuromorphicCost]) -> None:
        """A batch of ``samples``: its cost, its accuracy at each step count and the cost of each cut."""
        assert cost.events is not None and cost.event_synops is not None and cost.latency is not None
        for name in ("spikes", "synops", "dense_macs", "events", "event_synops"):
            values = getattr(cost, name)
            totals = self.layers.setdefault(name, [0.0] * len(values))
            for layer, value in enumerate(values):
                totals[layer] += value
        self.inputs += cost.input_macs
        self.latencies.append(cost.latency.cpu())
        for t, acc in accuracies.items():
            self.correct[t] += acc * samples
        for t, cut in cut_costs.items():
            self.synops_at[t] += cut.total_synops
            self.event_synops_at[t] += sum(cut.event_synops or [])

    def record(self, n: int) -> Record:
        """Per-inference figures over ``n`` samples; a cut that was not run (``None`` accuracy) stays ``None``."""
        sums = {name: sum(values) for name, values in self.layers.items()}
        latency = torch.cat(self.latencies).double()
        record: Record = {
            "steps": self.steps, "samples": n, "accuracy": self.correct[self.steps] / n,
            "spikes_per_inference": sums["spikes"] / n, "synops_per_inference": sums["synops"] / n,
            "dense_macs_per_inference": sums["dense_macs"] / n,
            "synops_over_dense": sums["synops"] / sums["dense_macs"],
            "events_per_inference": sums["events"] / n, "event_synops_per_inference": sums["event_synops"] / n,
            "event_synops_over_dense": sums["event_synops"] / sums["dense_macs"],
            "input_macs_per_inference": self.inputs / n,
            "spikes_per_layer": [v / n for v in self.layers["spikes"]],
            "synops_per_layer": [v / n for v in self.layers["synops"]],
            "latency_mean": float(latency.mean()), "latency_median": float(latency.median()),
            "latency_p90": float(torch.quantile(latency, 0.9)),
            "measure_s": round(time.perf_counter() - self.start, 2),
        }
        for t in self.cuts:
            run = t in self.synops_at
            record[f"acc_at_{t}"] = self.correct[t] / n if run else None
            record[f"synops_at_{t}"] = self.synops_at[t] / n if run else None
            record[f"event_synops_at_{t}"] = self.event_synops_at[t] / n if run else None
        return record


@torch.no_grad()
def measure_csnn(module: SnnTorchCSNN, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 cuts: Sequence[int]) -> Record:
    """The same record as :func:`measure` for snnTorch's conv SNN: its ``num_steps`` presentation, and the cuts
    that fall within it (re-run with fewer steps: the same run stopped earlier); the others are ``None``."""
    module.eval()
    steps = module.hparams.num_steps
    within = [t for t in cuts if t <= steps]
    totals = CostTotals(steps, cuts, within)
    for lo in range(0, len(x), batch_size):
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
        run = module.simulate(xb)
        cut_costs = {t: csnn_cost(module, module.simulate(xb, steps=t)) for t in within}
        totals.add(csnn_cost(module, run), csnn_accuracy_at_steps(run, yb, [steps, *within]), len(yb), cut_costs)
    hp = module.hparams
    return {"kind": "snntorch_csnn", "threshold": None, "leaky_threshold": hp.threshold, "leaky_beta": hp.beta,
            "pooling": hp.pooling, "channels": list(hp.channels), "hidden": list(hp.hidden), **totals.record(len(x))}


@torch.no_grad()
def measure(module: EPLightningModule, x: torch.Tensor, y: torch.Tensor, batch_size: int, cuts: Sequence[int],
            steps: int | None = None) -> Record:
    """Accuracy, cost per inference and latency of the module's free phase on ``x``, ``y``, and the accuracy and
    SynOps of the same runs cut after each of ``cuts`` steps."""
    phases, net = module.phases, module.net.eval()
    t_eval = steps or phases.evaluation_steps
    totals = CostTotals(t_eval, cuts)
    for lo in range(0, len(x), batch_size):
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
        _, trace = traced_free_phase(net, xb, max(t_eval, *cuts), phases.update, phases.tol, phases.start, phases.omega)
        totals.add(trace_cost(net, trace, t_eval), accuracy_at_steps(trace, yb, [t_eval, *cuts]), len(yb),
                   {t: trace_cost(net, trace, t) for t in cuts})
    config = module.network_config
    return {"kind": "ep", "threshold": net.threshold, "pooling": config.pooling, "channels": list(config.channels),
            "hidden": list(config.hidden), "start": phases.start, "update": phases.update, "omega": phases.omega,
            "tol": phases.tol,
            **totals.record(len(x))}


def markdown_table(records: Sequence[Record], cuts: Sequence[int]) -> str:
    """The README table: one row per network."""
    head = ["network", "θ", "T", "test acc", "spikes / inf.", "SynOps / inf.", "events / inf.", "event SynOps / inf.",
            "dense MACs / inf.", "SynOps / MACs", "event SynOps / MACs", "latency (mean, p90)",
            *(f"acc @ {t}" for t in cuts)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in records:
        theta = "—" if r["threshold"] is None else f"{r['threshold']:g}"
        cells = [r["label"], theta, str(r["steps"]), f"{100 * r['accuracy']:.2f} %",
                 _si(r["spikes_per_inference"]), _si(r["synops_per_inference"]), _si(r["events_per_inference"]),
                 _si(r["event_synops_per_inference"]), _si(r["dense_macs_per_inference"]),
                 f"{r['synops_over_dense']:.3f}", f"{r['event_synops_over_dense']:.3f}",
                 f"{r['latency_mean']:.1f}, {r['latency_p90']:.0f}",
                 *("—" if r[f"acc_at_{t}"] is None else f"{100 * r[f'acc_at_{t}']:.1f} %" for t in cuts)]
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
            points = sorted((r[f"{prefix}_at_{t}"], r[f"acc_at_{t}"], t) for t in cuts if r[f"acc_at_{t}"] is not None)
            name_theta = "" if r["threshold"] is None else f": θ={r['threshold']:g}"
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color=f"C{i}",
                    label=f"{r['label']}{name_theta}")
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
    parser.add_argument("--csnn-checkpoint", type=Path, nargs="+", default=[],
                        help="SnnTorchCSNN checkpoints (snnTorch's conv SNN baseline, recipes/fmnist_csnn.py)")
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
    if not args.checkpoint and not args.csnn_checkpoint and not args.quick:
        parser.error("pass --checkpoint (trained EPLightningModule checkpoints), --csnn-checkpoint or --quick")
    if args.label is not None and len(args.label) != len(args.checkpoint):
        parser.error("--label needs one name per --checkpoint")
    setup_threads(args.threads)
    samples = args.samples or (256 if args.quick else 10_000)
    x, y, source = load_batch(samples, split="test", data_dir=args.data_dir, allow_synthetic=args.quick)
    networks: list[tuple[str, EPLightningModule, Path | None]] = []
    for i, path in enumerate(args.checkpoint):
        module = EPLightningModule.load_from_checkpoint(path, map_location="cpu")
        networks.append((args.label[i] if args.label else path.stem, module, path))
    baselines: list[tuple[str, SnnTorchCSNN, Path | None]] = [
        (f"snnTorch CSNN ({path.stem})", SnnTorchCSNN.load_from_checkpoint(path, map_location="cpu"), path)
        for path in args.csnn_checkpoint]
    if not networks and not baselines:
        xt, yt, train_source = load_batch(64 * args.train_steps, split="train", data_dir=args.data_dir,
                                          allow_synthetic=True)
        networks.append((f"tiny EP net, {args.train_steps} steps", train_tiny(xt, yt, args.train_steps), None))
        baselines.append((f"tiny snnTorch CSNN, {args.train_steps} steps",
                          train_tiny_csnn(xt, yt, args.train_steps), None))
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
    for label, csnn, path in baselines:
        record = {**measure_csnn(csnn, x, y, args.batch_size, args.cuts), "label": label,
                  "checkpoint": None if path is None else str(path)}
        records.append(record)
        print(f"{label}: accuracy {record['accuracy']:.4f}, SynOps {record['synops_per_inference']:.4g}, "
              f"latency {record['latency_mean']:.2f}", flush=True)
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
