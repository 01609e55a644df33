"""Learning curves of the recorded training runs: validation error per epoch, one panel per dataset.

    python benchmarks/plot_training.py [--out docs/training_curves.png]

Reads ``benchmarks/results/training.json`` (written by ``benchmarks/training.py``); runs recorded without a
``curve`` are left out. Each run's final test error is in its legend entry; the dotted line is the paper's.
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
    """Legend entry: method, neuron, pooling, width, epochs, test error, and partial when cut."""
    neuron = f"spiking θ={record['threshold']:g}" if record["spiking"] else "non-spiking"
    status = "" if record["complete"] else ", partial"
    return (f"{record['method'].upper()} {neuron} {record['pooling']} h{record['hidden'][0]}, "
            f"{record['epochs']:g} ep{status}: test {100 * record['test_error']:.2f} %")


def plot(records: list[dict], out: Path) -> Path:
    with_curves = [r for r in records if r.get("curve")]
    datasets = [d for d in PAPER_ERROR if any(r["dataset"] == d for r in with_curves)]
    if not datasets:
        raise SystemExit("no run in training.json has a curve: record one with benchmarks/training.py first")
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for record in (r for r in with_curves if r["dataset"] == dataset):
            epochs = [p["epoch"] for p in record["curve"]]
            errors = [100 * (1 - p["val_acc"]) for p in record["curve"]]
            ax.plot(epochs, errors, marker="o", markersize=3, label=label(record))
        ax.axhline(100 * PAPER_ERROR[dataset], color="k", linestyle=":", label="paper (test error)")
        ax.set(title=TITLES[dataset], xlabel="epoch", ylabel="validation error (%)", yscale="log")
        percent = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(percent)
        ax.yaxis.set_minor_formatter(percent)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "training_curves.png")
    args = parser.parse_args()
    print(f"wrote {plot(json.loads(args.results.read_text()), args.out)}")


if __name__ == "__main__":
    main()
