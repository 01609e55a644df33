"""Learning curves of the recorded training runs: validation error per epoch, one panel per dataset.

    python benchmarks/plot_training.py [--out docs/training_curves.png] [--gradient-out docs/training_gradient.png]
                                       [--pooling-out docs/training_pooling.png]
                                       [--methods-out docs/training_methods.png]

Reads ``benchmarks/results/training.json`` (written by ``benchmarks/training.py``); runs recorded without a
``curve`` are left out. Each run's final test error is in its legend entry; the dotted line is the paper's. The
second figure shows, for the runs that measured it, the EP gradient's cosine to the run's BPTT reference along
training and how far the free phase settled. The third compares max with average pooling (the paper's claim): the
complete max-pooling runs that recorded the route statistics (``ActivationDiagnostics``), each average-pooling run
of the same settings, and the route sums of the paper's Figure 2 along training (the table's start, middle and end
are printed). The fourth compares EP with BPTT of the same network over full runs: each complete BPTT run longer than
the 2-epoch demo beside the complete EP runs of the same settings (their validation accuracy by epoch is printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
from itertools import cycle, islice, zip_longest
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

ROOT = Path(__file__).resolve().parents[1]
PAPER_ERROR = {"mnist": 0.0097, "fashion_mnist": 0.0889}
TITLES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def command_value(record: dict, flag: str) -> str | None:
    """The value the record's command gives ``flag`` (``flag value`` or ``flag=value``; None without it): how a
    record older than a field names that setting."""
    tokens = shlex.split(record.get("command", ""))
    for token, following in zip_longest(tokens, tokens[1:]):
        if token == flag:
            return following
        if token.startswith(f"{flag}="):
            return token.removeprefix(f"{flag}=")
    return None


def curvature_bound(record: dict) -> str | float | None:
    """The run's curvature bound (None: unbounded), read from its command for records older than the field."""
    bound = record.get("curvature_bound")
    if bound is None:
        bound = command_value(record, "--model.curvature_bound")  # records older than the field: the old flag
    return None if bound in (None, "null") else bound


def label(record: dict) -> str:
    """Legend entry: method, neuron, pooling, width, curvature bound, epochs, test error, and partial when cut."""
    neuron = f"spiking θ={record['threshold']:g}" if record["spiking"] else "non-spiking"
    status = "" if record["complete"] else ", partial"
    bound = curvature_bound(record)
    curvature = "" if bound is None else f" λ≤{bound}"
    return (f"{record['method'].upper()} {neuron} {record['pooling']} h{record['hidden'][0]}{curvature}, "
            f"{record['epochs']:g} ep{status}: test {100 * record['test_error']:.2f} %")


def error_curve(record: dict) -> tuple[list[float], list[float]]:
    """Epochs and validation error (%) along the run."""
    return [p["epoch"] for p in record["curve"]], [100 * (1 - p["val_acc"]) for p in record["curve"]]


def cosine_curve(record: dict, key: str = "alignment_cos_all") -> tuple[list[float], list[float]]:
    """Epochs and the EP-vs-BPTT cosine (``key``: over all parameters, or ``alignment_cos_min``) where measured."""
    points = [p for p in record["curve"] if key in p]
    return [p["epoch"] for p in points], [p[key] for p in points]


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
    with_curves = [r for r in records if r.get("curve") and r["method"] != "csnn"]  # EP and BPTT of EP's network
    datasets = [d for d in PAPER_ERROR if any(r["dataset"] == d for r in with_curves)]
    if not datasets:
        raise SystemExit("no run in training.json has a curve: record one with benchmarks/training.py first")
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 7.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        use_run_colours(ax)
        for record in (r for r in with_curves if r["dataset"] == dataset):
            ax.plot(*error_curve(record), marker="o", markersize=3, label=label(record))
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
        name = f"{TITLES[record['dataset']]}: {label(record)}"
        (line,) = ax_cos.plot(*cosine_curve(record), marker="o", markersize=3, label=name)
        ax_cos.plot(*cosine_curve(record, "alignment_cos_min"), linestyle="--", color=line.get_color(), alpha=0.6,
                    label="_nolegend_")
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


#: Settings a max-pooling run and its average-pooling counterpart share.
SAME_SETTINGS = ("dataset", "method", "hidden", "threshold", "t1", "t2", "beta", "max_epochs")


def pooling_runs(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The complete max-pooling runs with route statistics, and the complete average-pooling runs of the same
    settings (unbounded, like them)."""
    maxed = [r for r in records if r.get("pooling") == "max" and r.get("activations") and r["complete"]]
    keys = {tuple(str(r.get(k)) for k in SAME_SETTINGS) for r in maxed}
    averaged = [r for r in records if r.get("pooling") == "avg" and r["complete"] and r.get("curve")
                and curvature_bound(r) is None and tuple(str(r.get(k)) for k in SAME_SETTINGS) in keys]
    return maxed, averaged


def route_sums_table(record: dict) -> list[str]:
    """The paper's Figure 2 statistic (per-sample summed forward and backward route, mean over the batch) per conv
    layer at the start, middle and end of training."""
    history = record["activations"]
    forward, backward = (history[0]["quantities"].index(q) for q in ("forward_sum", "backward_sum"))
    rows = []
    for where, point in zip(("start", "middle", "end"), (history[0], history[len(history) // 2], history[-1]),
                            strict=True):
        cells = [f"conv{layer + 1} {row[forward]:.1f} / {row[backward]:.1f}" for layer, row in enumerate(point["mean"])]
        rows.append(f"{label(record)} | step {point['step']} ({where}): forward / backward " + ", ".join(cells))
    return rows


def plot_pooling(maxed: list[dict], averaged: list[dict], out: Path) -> Path:
    """Max against average pooling over full runs (see :func:`pooling_runs`): validation error, the EP gradient's
    cosine to BPTT, and the summed forward and backward routes of each conv layer (Figure 2) along training."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 11))
    (ax_err, ax_cos), route_axes = axes
    colours = list(islice(cycle(plt.get_cmap("tab10").colors), len(maxed + averaged)))  # the same in every panel
    for record, colour in zip(maxed + averaged, colours, strict=True):
        name = label(record)
        ax_err.plot(*error_curve(record), marker="o", markersize=3, color=colour, label=name)
        epochs, cosines = cosine_curve(record)
        ax_cos.plot(epochs, cosines, marker="o", markersize=3, color=colour,
                    label=name if cosines else f"{name} (not measured)")
    for layer, ax in enumerate(route_axes):
        for record, colour in zip(maxed, colours, strict=False):  # the max-pooling runs come first
            history = record["activations"]
            quantities = history[0]["quantities"]
            epochs = [a["step"] * record["epochs"] / record["global_steps"] for a in history]
            neuron = "spiking" if record["spiking"] else "non-spiking"
            for q, style in (("forward_sum", "-"), ("backward_sum", "--")):
                k = quantities.index(q)
                ax.plot(epochs, [a["mean"][layer][k] for a in history], linestyle=style, marker="o", markersize=3,
                        color=colour, label=f"{neuron}: {q.replace('_sum', ' route')}")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="epoch", ylabel="summed route activation per sample (batch mean)",
               title=f"max pooling, conv{layer + 1}: forward route P(W*X) vs backward route Wᵀ*Pᵀ(X)\n"
                     "(the paper's Figure 2, nudged phase)")
    ax_err.set(xlabel="epoch", ylabel="validation error (%)", title="max vs average pooling: validation error")
    ax_cos.set(xlabel="epoch", ylabel="cos(EP, BPTT reference)", ylim=(-0.5, 1.02),
               title="EP gradient against BPTT (64 held-out images)")
    for ax in axes.flat:
        finish_axes(ax)
    return save(fig, out)


#: Settings an EP run and a BPTT run share to be compared, besides the curvature bound and the optimizer.
SAME_NETWORK = ("dataset", "hidden", "threshold", "pooling", "t1", "t2", "beta", "max_epochs", "batch_size",
                "curvature_iters")


def optimizer_name(record: dict) -> str:
    """The run's optimizer: the record's field, else its command's ``--model.optimizer`` (records older than the
    field), else the module's default, Adam."""
    if record.get("optimizer"):
        return record["optimizer"]
    name = command_value(record, "--model.optimizer")
    return "Adam" if name is None else name.rsplit(".", 1)[-1]


def method_pairs(records: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Each complete BPTT run of EP's objective (``bptt_objective='nudged'``) longer than the 2-epoch demo, with the
    complete EP runs of the same settings (``SAME_NETWORK``, curvature bound, optimizer); BPTT runs without one are
    left out."""
    def settings(record: dict) -> tuple[str, ...]:
        return (*(str(record.get(k)) for k in SAME_NETWORK), str(curvature_bound(record)), optimizer_name(record))

    def full(record: dict) -> bool:
        return record["complete"] and bool(record.get("curve")) and (record.get("max_epochs") or 0) > 2

    bptt = [r for r in records if r["method"] == "bptt" and r.get("bptt_objective") == "nudged" and full(r)]
    ep = [r for r in records if r["method"] == "ep" and full(r)]
    pairs = [(b, [e for e in ep if settings(e) == settings(b)]) for b in bptt]
    return [(b, eps) for b, eps in pairs if eps]


def methods_table(bptt: dict, eps: list[dict]) -> list[str]:
    """Validation accuracy (%) by epoch of a BPTT run and its EP runs (the header's labels give their test errors)."""
    runs = [bptt, *eps]
    by_epoch = [{p["epoch"]: p["val_acc"] for p in r["curve"]} for r in runs]
    rows = [" | ".join(["epoch", *(label(r) for r in runs)])]
    for epoch in sorted(set().union(*by_epoch)):
        cells = [f"{100 * accs[epoch]:.2f}" if epoch in accs else "-" for accs in by_epoch]
        rows.append(" | ".join([f"{epoch:g}", *cells]))
    return rows


def plot_methods(pairs: list[tuple[dict, list[dict]]], out: Path) -> Path:
    """EP against BPTT of the same network over full runs (see :func:`method_pairs`): validation error by epoch,
    and BPTT's minus EP's, with the band of 1 point either way."""
    fig, (ax_err, ax_gap) = plt.subplots(1, 2, figsize=(13, 7))
    colours = cycle(plt.get_cmap("tab10").colors)
    for bptt, eps in pairs:
        epochs_b, errors_b = error_curve(bptt)
        ax_err.plot(epochs_b, errors_b, linestyle="--", marker="s", markersize=3, color=next(colours),
                    label=label(bptt))
        for ep in eps:
            colour = next(colours)
            ax_err.plot(*error_curve(ep), marker="o", markersize=3, color=colour, label=label(ep))
            errors_e = dict(zip(*error_curve(ep), strict=True))
            gaps = [(e, b - errors_e[e]) for e, b in zip(epochs_b, errors_b, strict=True) if e in errors_e]
            ax_gap.plot([e for e, _ in gaps], [g for _, g in gaps], marker="o", markersize=3, color=colour,
                        label=f"{label(bptt)}\nminus {label(ep)}")
    ax_gap.axhspan(-1.0, 1.0, color="grey", alpha=0.15, label="within 1 point")
    ax_gap.axhline(0.0, color="grey", linewidth=0.8)
    ax_err.set(xlabel="epoch", ylabel="validation error (%)", title="EP against BPTT of EP's objective, same network")
    ax_gap.set(xlabel="epoch", ylabel="BPTT's minus EP's validation error (points)",
               title="how far BPTT is behind EP (above 0) or ahead (below)")
    for ax in (ax_err, ax_gap):
        finish_axes(ax)
    return save(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "training_curves.png")
    parser.add_argument("--gradient-out", type=Path, default=ROOT / "docs" / "training_gradient.png")
    parser.add_argument("--pooling-out", type=Path, default=ROOT / "docs" / "training_pooling.png")
    parser.add_argument("--methods-out", type=Path, default=ROOT / "docs" / "training_methods.png")
    args = parser.parse_args()
    records = json.loads(args.results.read_text())
    print(f"wrote {plot(records, args.out)}")
    written = plot_gradient(records, args.gradient_out)
    print(f"wrote {written}" if written else "no run measured its gradient along training: no gradient plot")
    maxed, averaged = pooling_runs(records)
    if maxed:
        print(f"wrote {plot_pooling(maxed, averaged, args.pooling_out)}")
        for record in maxed:
            print("\n".join(route_sums_table(record)))
    else:
        print("no complete max-pooling run with route statistics: no pooling plot")
    pairs = method_pairs(records)
    if pairs:
        print(f"wrote {plot_methods(pairs, args.methods_out)}")
        for bptt, eps in pairs:
            print("\n".join(methods_table(bptt, eps)))
    else:
        print("no complete full-length BPTT run with an EP run of the same settings: no methods plot")


if __name__ == "__main__":
    main()
