"""Learning curves of the beyond-paper configurations against the paper configuration, per dataset.

    python benchmarks/plot_beyond.py [--out docs/training_beyond.png]

Reads ``benchmarks/results/training.json`` (written by ``benchmarks/training.py``) and selects the runs as the
results tables do (``render_tables.BEYOND`` and ``render_tables.PAPER_CURVES``). One row per dataset that has a
complete beyond-paper run:

- validation error by epoch, each seed of the chosen beyond-paper configuration, the recipe it was chosen from as
  it is and each other full-length lever run on that recipe (``render_tables.beyond_levers``), and each baseline
  (``render_tables.beyond_baseline_commands``, dash-dotted) against the paper configuration's runs (dashed; all
  hold the same 5,000 training images out);
- training accuracy (the mean over the epoch's augmented training batches, as the weights change) against
  validation accuracy, so that overfitting can be seen (older paper-configuration records hold no training
  accuracy: their validation accuracy only);
- the cosine between the EP gradient and the BPTT gradient along training (``benchmarks/training.py``: a fixed batch
  of 64 validation images, BPTT through 200 free steps of the network without spikes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from plot_training import PAPER_ERROR, TITLES, cosine_curve, error_curve, save
from render_tables import (
    CHOSEN_FLAGS,
    PAPER_CURVES,
    Record,
    Results,
    beyond_baseline_commands,
    beyond_configs,
    beyond_levers,
    beyond_recipe,
    runs_of,
    setting,
)

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def run_name(record: Record, config: str) -> str:
    """Legend entry: the configuration, the seed and the test error."""
    return f"{config}, seed {setting(record, 'seed')}: test {100 * record['test_error']:.2f} %"


def accuracy_curves(record: Record) -> tuple[list[float], list[float], list[float], list[float]]:
    """Epochs and validation accuracy (%), then epochs and training accuracy (%) where recorded."""
    points = record["curve"]
    trained = [p for p in points if "train_acc" in p]
    return ([p["epoch"] for p in points], [100 * p["val_acc"] for p in points],
            [p["epoch"] for p in trained], [100 * p["train_acc"] for p in trained])


def plot_beyond(results: Results, out: Path) -> Path | None:
    """The figure (see the module docstring); None when no dataset has a complete beyond-paper run."""
    rows = []
    for dataset, config in beyond_configs(results):
        recipe = [("recipe as it is", beyond_recipe(results, dataset))] if CHOSEN_FLAGS[dataset] else []
        levers = [(f"recipe + {flags}", runs) for flags, runs in beyond_levers(results, dataset)
                  if flags != CHOSEN_FLAGS[dataset]]
        baselines = [(f"baseline: {label}", runs) for label, command in beyond_baseline_commands(dataset)
                     for runs in runs_of(results, dataset=dataset, command=command)]
        rows.append((dataset, [("beyond-paper config", config), *recipe, *levers], baselines,
                     [r for g in runs_of(results, **PAPER_CURVES[dataset]) for r in g]))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(19, 6.5 * len(rows)), squeeze=False)
    for (dataset, beyond, baselines, paper), (ax_err, ax_acc, ax_cos) in zip(rows, axes, strict=True):
        styled = [(runs, config, COLOURS[i % len(COLOURS)], "-" if i < len(beyond) else "-.")
                  for i, (config, runs) in enumerate([*beyond, *baselines])]
        for runs, config, colour, style in (*styled, (paper, "paper config", "tab:grey", "--")):
            for record in runs:
                name = run_name(record, config)
                ax_err.plot(*error_curve(record), color=colour, linestyle=style, marker="o", markersize=2.5,
                            label=name)
                epochs, val, train_epochs, train = accuracy_curves(record)
                ax_acc.plot(epochs, val, color=colour, linestyle=style, label=f"{name}: validation")
                if train:
                    ax_acc.plot(train_epochs, train, color=colour, linestyle=style, alpha=0.45, linewidth=2.5,
                                label=f"{name}: training (augmented batches)")
                if any("alignment_cos_all" in p for p in record["curve"]):
                    ax_cos.plot(*cosine_curve(record), color=colour, linestyle=style, marker="o", markersize=2.5,
                                label=name)
        ax_err.axhline(100 * PAPER_ERROR[dataset], color="k", linestyle=":", label="the paper's test error")
        ax_err.set(title=f"{TITLES[dataset]}: validation error", xlabel="epoch", ylabel="validation error (%)",
                   yscale="log")
        ax_acc.set(title=f"{TITLES[dataset]}: training against validation accuracy", xlabel="epoch",
                   ylabel="accuracy (%)")
        ax_cos.set(title=f"{TITLES[dataset]}: cos(EP gradient, BPTT gradient) on 64 validation images",
                   xlabel="epoch", ylabel="cosine over all parameters", ylim=(0, 1.02))
        for ax in (ax_err, ax_acc, ax_cos):
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return save(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="the records' directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "training_beyond.png")
    args = parser.parse_args()
    written = plot_beyond(Results(args.results), args.out)
    print(f"wrote {written}" if written else "no complete beyond-paper run recorded yet: no figure")


if __name__ == "__main__":
    main()
