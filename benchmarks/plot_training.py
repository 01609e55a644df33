"""Learning curves of the recorded training runs: validation error per epoch, one panel per dataset.

    python benchmarks/plot_training.py [--out docs/training_curves.png] [--gradient-out docs/training_gradient.png]

Reads ``benchmarks/results/training.json`` (written by ``benchmarks/training.py``); runs recorded without a
``curve`` are left out. Each run's final test error is in its legend entry; the dotted line is the paper's. The
second figure shows, for the runs that measured it, the EP gradient's cosine to the run's BPTT reference along
training and how far the free phase settled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

ROOT = Path(__file__).resolve().parents[1]
PAPER_ERROR = {"mnist": 0.0097, "fashion_mnist": 0.0889}
TITLES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def label(record: dict) -> str:
    """Legend entry: method, neuron, pooling, width, curvature bound, epochs, test error, and partial when cut."""
    neuron = f"spiking θ={record['threshold']:g}" if record["spiking"] else "non-spiking"
    status = "" if record["complete"] else ", partial"
    bound = record.get("curvature_bound")
    command = record.get("command", "")
    if bound is None and "--model.curvature_bound" in command:  # records from before it was a field
        bound = command.split("--model.curvature_bound")[1].split()[0].lstrip("=")
    curvature = "" if bound in (None, "null") else f" λ≤{bound}"
    return (f"{record['method'].upper()} {neuron} {record['pooling']} h{record['hidden'][0]}{curvature}, "
            f"{record['epochs']:g} ep{status}: test {100 * record['test_error']:.2f} %")


def use_run_colours(ax: plt.Axes) -> None:
    """One tab20 colour per run: more runs than the default 10 colours."""
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)


def finish_axes(ax: plt.Axes, ncol: int = 1) -> None:
    """Epochs from 0, a light grid, and the legend below the axes, off the curves."""
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol)


def save(fig: plt.Figure, out: Path) -> Path:
    """Write the figure, its legends included, and close it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot(records: list[dict], out: Path) -> Path:
    with_curves = [r for r in records if r.get("curve")]
    datasets = [d for d in PAPER_ERROR if any(r["dataset"] == d for r in with_curves)]
    if not datasets:
        raise SystemExit("no run in training.json has a curve: record one with benchmarks/training.py first")
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 7.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        use_run_colours(ax)
        for record in (r for r in with_curves if r["dataset"] == dataset):
            epochs = [p["epoch"] for p in record["curve"]]
            errors = [100 * (1 - p["val_acc"]) for p in record["curve"]]
            ax.plot(epochs, errors, marker="o", markersize=3, label=label(record))
        ax.axhline(100 * PAPER_ERROR[dataset], color="k", linestyle=":", label="paper (test error)")
        ax.set(title=TITLES[dataset], xlabel="epoch", ylabel="validation error (%)", yscale="log")
        percent = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(percent)
        ax.yaxis.set_minor_formatter(percent)
        finish_axes(ax, ncol=2)
    return save(fig, out)


def plot_gradient(records: list[dict], out: Path) -> Path | None:
    """For the runs that measured it along training: the cosine of the EP gradient to the run's BPTT reference
    (see ``benchmarks/training.py``) on a fixed held-out batch, and the free phase's largest last-step state change
    on the validation set."""
    runs = [r for r in records if any("alignment_cos_all" in p for p in r.get("curve", []))]
    if not runs:
        return None
    fig, (ax_cos, ax_change) = plt.subplots(1, 2, figsize=(13, 8.5))  # tall: the legends go below the axes
    for ax in (ax_cos, ax_change):
        use_run_colours(ax)
    for record in runs:
        points = [p for p in record["curve"] if "alignment_cos_all" in p]
        name = f"{TITLES[record['dataset']]}: {label(record)}"
        (line,) = ax_cos.plot([p["epoch"] for p in points], [p["alignment_cos_all"] for p in points], marker="o",
                              markersize=3, label=name)
        ax_cos.plot([p["epoch"] for p in points], [p["alignment_cos_min"] for p in points], linestyle="--",
                    color=line.get_color(), alpha=0.6, label="_nolegend_")
        ax_change.plot([p["epoch"] for p in record["curve"]], [p["val_change_free"] for p in record["curve"]],
                       marker="o", markersize=3, label=name)
    ax_cos.set(xlabel="epoch", ylabel="cos(EP, BPTT reference)", ylim=(-0.5, 1.02),
               title="EP gradient against the run's BPTT reference (64 held-out images)\n"
                     "solid: all parameters; dashed: the worst parameter tensor")
    ax_cos.axhline(0.0, color="grey", linewidth=0.8)
    ax_change.set(xlabel="epoch", ylabel="largest state change in the last free step", yscale="log",
                  title="how far the free phase settled (validation)")
    for ax in (ax_cos, ax_change):
        finish_axes(ax)
    return save(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "training_curves.png")
    parser.add_argument("--gradient-out", type=Path, default=ROOT / "docs" / "training_gradient.png")
    args = parser.parse_args()
    records = json.loads(args.results.read_text())
    print(f"wrote {plot(records, args.out)}")
    written = plot_gradient(records, args.gradient_out)
    print(f"wrote {written}" if written else "no run measured its gradient along training: no gradient plot")


if __name__ == "__main__":
    main()
