"""Write every results and benchmark table of the docs from the records in ``benchmarks/results/*.json``.

    python benchmarks/render_tables.py                   # rewrite the generated blocks of README.md and docs/**/*.md
    python benchmarks/render_tables.py --check           # exit 1 and list the files and blocks that differ
    python benchmarks/render_tables.py --list            # the block names, their sources and what each holds
    python benchmarks/render_tables.py docs/results.md   # only these Markdown files

Any Markdown file may hold generated blocks; the script replaces whatever lies between a block's two markers with
the text ``BLOCKS[name]`` renders from the records (a block name may appear in several files):

    <!-- BEGIN GENERATED: headline -->
    <!-- END GENERATED: headline -->

Every figure of a block comes from a record. The selections (which runs a row compares) are written here as the
settings a run must have; a selection that matches no run, or runs of more than one setting, is an error, so that a
new record cannot silently change what a row means. Runs that differ only by their seed form one setting and are
shown as mean ± sd (the sample standard deviation, n - 1 in the denominator).

Older training records hold fewer fields: a setting they lack is read from their command (with the flag names of
their day, ``FLAGS``), else it is the module's default where that default has not changed (``DEFAULTS``), else it
is "not recorded" and never guessed.
"""

from __future__ import annotations

import argparse
import ast
import functools
import itertools
import json
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plot_training import command_value

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
Record = dict[str, Any]

#: The paper's test error (Lin, Bal & Sengupta, ICONS 2024, 2C2FC network): the only figures not from a record.
PAPER = {"mnist": 0.0097, "fashion_mnist": 0.0889}
DATASETS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}

BLOCK = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n?(?P<body>.*?)<!-- END GENERATED: (?P=name) -->",
                   re.DOTALL)
MARKER = re.compile(r"<!-- (?P<end>BEGIN|END) GENERATED: (?P<name>[^ ]+) -->")


class RenderError(ValueError):
    """A selection that does not name exactly one setting, a missing results file, or malformed markers."""


class Results:
    """The records of a results directory, read on first use: ``results["training"]`` is ``training.json``."""

    def __init__(self, directory: Path = RESULTS_DIR) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, list[Record]] = {}
        self.used: set[str] = set()

    def __getitem__(self, name: str) -> list[Record]:
        if name not in self._cache:
            path = self.directory / f"{name}.json"
            if not path.exists():
                raise RenderError(f"{path} does not exist")
            self._cache[name] = json.loads(path.read_text())
        self.used.add(name)
        return self._cache[name]


# --------------------------------------------------------------------------------------------------- formatting


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage: 0.0896 -> '8.96 %'."""
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def points(x: float) -> str:
    """A difference of two fractions in percentage points, signed: -0.0004 -> '−0.04'."""
    return signed(f"{100 * x:+.2f}")


def signed(text: str) -> str:
    """A typographic minus sign in a formatted number."""
    return text.replace("-", "−")


def cosine(x: float) -> str:
    """A cosine: three decimals, four where three would round to ±1."""
    text = f"{x:.3f}"
    return signed(f"{x:.4f}" if text in ("1.000", "-1.000") else text)


def mib(nbytes: float) -> str:
    """Bytes as MiB, three significant figures or one decimal."""
    value = nbytes / 2**20
    return f"{value:.2f} MiB" if value < 10 else f"{value:.1f} MiB"


def ratio(x: float) -> str:
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×"


def small(x: float | None) -> str:
    """A state change or other small positive quantity: three decimals, or one significant figure below 1e-3."""
    if x is None:
        return "–"
    return "0" if x == 0 else f"{x:.3f}" if x >= 1e-3 else f"{x:.0e}"


def count(x: float) -> str:
    """A count per inference: 191069 -> '191 k', 78638658 -> '78.6 M'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            value = x / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{x:.3g}"


def code(text: str) -> str:
    """Inline code in a table cell (a pipe would end the cell)."""
    return "`" + text.replace("|", "\\|") + "`"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A Markdown table; the columns in ``right`` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(record: Record, full: bool = False) -> str:
    """Where a record ran, from its ``hardware`` field ('CPU | n cpus | torch | n threads | OS'): the CPU model
    and threads, or (``full``) also the CPU count and the torch build. A run resumed on other machines names each
    part's in turn (from ``hardware_parts``)."""
    names: list[str] = []
    for hardware in record.get("hardware_parts") or [record["hardware"]]:
        name = "not recorded" if hardware is None else describe_hardware(hardware, full)
        if not names or names[-1] != name:
            names.append(name)
    return " then ".join(names)


def describe_hardware(hardware: str, full: bool) -> str:
    """One ``hardware`` string, named as ``machine`` does."""
    parts = [p.strip() for p in hardware.split("|")]
    cpu = re.sub(r"\s+", " ", re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", "", parts[0])).strip()
    threads = parts[3].replace("1 threads", "1 thread") if len(parts) > 3 else "threads not recorded"
    if full and len(parts) > 3:
        return f"{cpu}, {parts[1].replace('cpus', 'CPUs')}, torch {parts[2].removeprefix('torch ')}, {threads}"
    return f"{cpu}, {threads}"


def machines(runs: Sequence[Record]) -> str:
    """Where a group of seeds ran: one machine, or each machine with its seeds."""
    seeds: dict[str, list[int]] = {}
    for r in runs:
        seeds.setdefault(machine(r), []).append(r.get("seed"))
    if len(seeds) == 1:
        return next(iter(seeds))
    if any(seed is None for ss in seeds.values() for seed in ss):  # older records: seeds not recorded
        return " and ".join(sorted(seeds))
    return " and ".join(f"{m} (seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, sorted(ss)))})"
                        for m, ss in sorted(seeds.items()))


def one(records: Sequence[Record], key: str) -> Any:
    """The value every record holds under ``key`` (an error when they differ)."""
    values = {json.dumps(r.get(key), sort_keys=True) for r in records}
    if len(values) != 1:
        raise RenderError(f"records differ in {key!r}: {sorted(values)}")
    return records[0].get(key)


def produced_by(records: Sequence[Record], source: str) -> str:
    """The caption line naming the command that wrote the records and where they are."""
    commands = sorted({r["command"] for r in records})
    machines = sorted({machine(r, full=True) for r in records})
    return (f"Records: `benchmarks/results/{source}.json`, written by {', '.join(code(c) for c in commands)} "
            f"({'; '.join(machines)}).")


# ------------------------------------------------------------------------------------------ training records

#: Flags that set a setting, the current name first, then the names older records' commands used.
FLAGS: dict[str, tuple[str, ...]] = {
    "curvature_bound": ("--model.curvature.bound", "--model.curvature_bound"),
    "curvature_iters": ("--model.curvature.iters", "--model.curvature_iters"),
    "curvature_every": ("--model.curvature.every_n_batches",),
    "optimizer": ("--model.optim.optimizer", "--model.optimizer"),
    "weight_decay": ("--model.optim.weight_decay", "--model.optimizer.weight_decay"),
    "bptt_objective": ("--model.bptt.objective",),
    "bptt_truncate": ("--model.bptt.truncate", "--model.bptt_truncate"),
    "dither": ("--model.ep.dither", "--model.dither"),
    "average_last": ("--model.ep.average_last", "--model.average_last"),
    "accelerator": ("--trainer.accelerator",),
    "seed": ("--seed_everything",),
    "shift": ("--data.shift",),
    "hflip": ("--data.hflip",),
    "eval_hflip": ("--model.eval_hflip",),
    "label_smoothing": ("--model.network.label_smoothing",),
}
#: The value of a setting that neither the record nor its command states: the module's default, unchanged since
#: the first record (the curvature bound did not exist before its field; the CLI's seed default is 0).
DEFAULTS: dict[str, Any] = {"optimizer": "adam", "weight_decay": 0.0, "dither": False, "average_last": 0,
                            "bptt_truncate": None, "curvature_bound": None, "accelerator": "cpu", "seed": 0,
                            "shift": 0, "hflip": False, "curvature_every": 1, "eval_hflip": False,
                            "label_smoothing": 0.0}
#: The settings that make two runs the same experiment (runs that share them and their command, less the seed,
#: are seeds of one setting).
SETTINGS = ("dataset", "method", "bptt_objective", "bptt_truncate", "threshold", "pooling", "channels", "hidden",
            "t1", "t2", "beta", "start", "omega", "loss", "curvature_bound", "curvature_iters", "curvature_every",
            "optimizer", "weight_decay", "dither", "average_last", "batch_size", "train_samples", "max_epochs",
            "accelerator", "shift", "hflip", "eval_hflip", "label_smoothing")
#: Flags that change neither the run nor its result, left out of the commands shown.
COSMETIC = ("--note", "--trainer.enable_progress_bar", "--trainer.default_root_dir", "--ckpt_path")


class Unknown:
    """A setting the record does not hold."""

    def __repr__(self) -> str:
        return "not recorded"


UNKNOWN = Unknown()


def flag_value(record: Record, flags: Iterable[str]) -> str | None:
    """The value the record's command gives the first of ``flags`` it uses (``--flag value`` or ``--flag=value``)."""
    return next((value for flag in flags if (value := command_value(record, flag)) is not None), None)


def parse_value(text: str) -> Any:
    """A command-line value as JSON would read it ('null' -> None, '0.9' -> 0.9, 'true' -> True), else the text."""
    try:
        return json.loads(text.lower() if text.lower() in ("null", "true", "false") else text)
    except json.JSONDecodeError:
        return text


def setting(record: Record, name: str) -> Any:
    """A training record's setting: its field, else its command's flag, else the unchanged default, else UNKNOWN."""
    if name in ("curvature_iters", "curvature_every") and setting(record, "curvature_bound") is None:
        return None
    if name == "bptt_objective" and record.get("method") != "bptt":
        return None
    if name in record and not (name == "bptt_objective" and record[name] is None):
        value = record[name]
    elif (text := flag_value(record, FLAGS.get(name, ()))) is not None:
        value = parse_value(text)
    elif name == "curvature_bound" and flag_value(record, ("--model.curvature",)) in ("null", "None"):
        value = None
    elif name == "bptt_objective" and setting(record, "bptt_truncate"):
        value = "free"  # truncation is of the free phase; with it the objective defaults to the free loss
    elif name in DEFAULTS:
        value = DEFAULTS[name]
    else:
        return UNKNOWN
    if name == "optimizer":
        value = str(value).rsplit(".", 1)[-1].lower()
    if name == "weight_decay":
        value = float(value)
    return tuple(value) if isinstance(value, list) else value


FLAT_TO_GROUP = {  # the module's flat arguments of older records, by today's group
    **dict.fromkeys(("channels", "kernel_size", "padding", "pooling", "hidden", "layers", "loss", "threshold",
                     "graded"), "network"),
    **dict.fromkeys(("t1", "t2", "eval_t1", "start", "omega", "update", "dynamics", "tol"), "phases"),
    **dict.fromkeys(("beta", "estimator", "dither", "average_last"), "ep"),
    **dict.fromkeys(("lr", "layer_lrs", "weight_decay", "momentum", "scheduler", "scheduler_interval",
                     "gradient_clip_val", "accumulate_grad_batches"), "optim"),
}


def todays_flags(command: str) -> str:
    """An older record's command in today's flag names (``--model.t1`` is ``--model.phases.t1``, a null curvature
    bound ``--model.curvature null``, ...): the same run, in a command that parses today."""
    command = re.sub(r"--model\.optimizer([ =])", r"--model.optim.optimizer\1", command)
    command = re.sub(r"--model\.optimizer\.(lr|weight_decay|momentum)\b", r"--model.optim.\1", command)
    command = re.sub(r"--model\.curvature_bound([ =])null", r"--model.curvature\1null", command)
    command = re.sub(r"--model\.curvature_(bound|iters|weight)\b", r"--model.curvature.\1", command)
    command = re.sub(r"--model\.bptt_(objective|truncate)\b", r"--model.bptt.\1", command)
    return re.sub(r"--model\.([a-z_0-9]+)\b(?!\.)",
                  lambda m: f"--model.{FLAT_TO_GROUP[m.group(1)]}.{m.group(1)}" if m.group(1) in FLAT_TO_GROUP
                  else m.group(0), command)


def shown_command(record: Record, drop_seed: bool = False) -> str:
    """The record's command less the flags that change nothing (``COSMETIC``; ``--trainer.max_time`` of a run that
    finished) and, with ``drop_seed``, less ``--seed_everything``; an EP run's in today's flag names."""
    drop = COSMETIC + (("--trainer.max_time",) if record.get("complete") else ()) + (
        ("--seed_everything",) if drop_seed else ())
    tokens, kept = shlex.split(record["command"]), []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in drop:
            skip = "=" not in token
            continue
        kept.append(token)
    command = shlex.join(kept)
    return command if record.get("method") == "csnn" else todays_flags(command)  # the renames are EP's flags


def signature(record: Record) -> tuple:
    """What makes two runs seeds of one setting: their settings and their command less the seed."""
    return (*(repr(setting(record, name)) for name in SETTINGS), shown_command(record, drop_seed=True))


def runs_of(results: Results, **criteria: Any) -> list[list[Record]]:
    """The complete training runs whose settings equal ``criteria`` (``command=``: the command less cosmetic
    flags and the seed), grouped into settings (each group: the seeds of one setting), in record order."""
    def matches(record: Record) -> bool:
        for name, wanted in criteria.items():
            value = shown_command(record, drop_seed=True) if name == "command" else setting(record, name)
            if value != (tuple(wanted) if isinstance(wanted, list) else wanted):
                return False
        return True

    groups: dict[tuple, list[Record]] = {}
    for record in results["training"]:
        if record.get("complete") and matches(record):
            groups.setdefault(signature(record), []).append(record)
    return list(groups.values())


def select(results: Results, **criteria: Any) -> list[Record]:
    """The seeds of the one setting ``criteria`` name; an error when they name none or several."""
    groups = runs_of(results, **criteria)
    if len(groups) != 1:
        found = "; ".join(shown_command(g[0]) for g in groups) or "no complete run"
        raise RenderError(f"selection {criteria} names {len(groups)} settings, not 1: {found}")
    return groups[0]


def error_of(runs: Sequence[Record]) -> str:
    """The test error of a setting: one run's, or mean ± sd over its seeds."""
    errors = [r["test_error"] for r in runs]
    if len(errors) == 1:
        return pct(errors[0])
    return f"{pct(statistics.mean(errors)).removesuffix(' %')} ± {pct(statistics.stdev(errors))}"


def per_run(runs: Sequence[Record]) -> str:
    """Each seed's test error: '8.53 / 9.09 / 8.92 %'."""
    return " / ".join(pct(r["test_error"]).removesuffix(" %") for r in runs) + " %"


def longest_minutes(runs: Sequence[Record]) -> str:
    """The longest wall time of the runs, in whole minutes."""
    return f"{max(r['wall_s'] for r in runs) / 60:.0f} min"


def mean_error(runs: Sequence[Record]) -> float:
    return statistics.mean(r["test_error"] for r in runs)


def seeds_of(runs: Sequence[Record]) -> str:
    seeds = [str(setting(r, "seed")) for r in runs]
    return f"1 run, seed {seeds[0]}" if len(runs) == 1 else f"{len(runs)} seeds ({', '.join(seeds)})"


def method_label(record: Record) -> str:
    if setting(record, "method") == "ep":
        return "EP"
    objective, truncate = setting(record, "bptt_objective"), setting(record, "bptt_truncate")
    if objective == "nudged":
        return "BPTT of EP's objective"
    if objective == "free":
        return "BPTT of the free loss" + (f", last {truncate} of T1 steps" if truncate else "")
    return "BPTT (objective not recorded)"


def _neuron(r: Record) -> str | None:
    theta = setting(r, "threshold")
    return None if theta is UNKNOWN else "non-spiking" if not theta else f"spiking θ {theta:g}"


def _start(r: Record) -> str | None:
    start = setting(r, "start")
    return None if start is UNKNOWN else {"zeros": "from zeros", "feedforward": "feed-forward start"}.get(start, start)


def _steps(r: Record) -> str | None:
    t1, t2 = setting(r, "t1"), setting(r, "t2")
    return None if UNKNOWN in (t1, t2) else f"T1 {t1} / T2 {t2}"


def _curvature(r: Record) -> str | None:
    bound, iters = setting(r, "curvature_bound"), setting(r, "curvature_iters")
    if bound is None:
        return "no curvature bound"
    rounds = "rounds not recorded" if iters is UNKNOWN else f"{iters} rounds"
    every = setting(r, "curvature_every")
    return f"curvature bound {bound:g} ({rounds}{f', every {every} batches' if every != 1 else ''})"


def _optimizer(r: Record) -> str:
    name = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}.get(setting(r, "optimizer"), setting(r, "optimizer"))
    decay = setting(r, "weight_decay")
    return f"{name}, weight decay {decay:g}" if decay else name


def _dither(r: Record) -> str:
    if not setting(r, "dither"):
        return ""
    last = setting(r, "average_last")
    return "dithered Sigma-Delta" + (f", energy at the last {last} nudged steps averaged" if last else "")


def _augmentation(r: Record) -> str:
    shift, hflip = setting(r, "shift"), setting(r, "hflip")
    said = ([f"shifts ≤ {shift} px"] if shift else []) + (["left-right flips"] if hflip else [])
    return " and ".join(said) if said else "no augmentation"


def _eval_hflip(r: Record) -> str:
    return "tested with mirror averaging" if setting(r, "eval_hflip") else ""


def _loss(r: Record) -> str | None:
    loss, smoothing = setting(r, "loss"), setting(r, "label_smoothing")
    if loss is UNKNOWN:
        return None
    return f"{loss} loss" + (f" with label smoothing {smoothing:g}" if smoothing else "")


def _simple(name: str, fmt: Callable[[Any], str]) -> Callable[[Record], str | None]:
    def aspect(r: Record) -> str | None:
        value = setting(r, name)
        return None if value is UNKNOWN else fmt(value)
    return aspect


#: The aspects of a run's settings shown in words, in order: name -> (label when not recorded, phrase).
ASPECTS: dict[str, tuple[str, Callable[[Record], str | None]]] = {
    "pooling": ("pooling", _simple("pooling", lambda v: f"{v} pooling")),
    "neuron": ("threshold", _neuron),
    "channels": ("channels", _simple("channels", lambda v: "conv " + "/".join(map(str, v)))),
    "hidden": ("hidden", _simple("hidden", lambda v: "hidden " + "/".join(map(str, v)))),
    "start": ("start", _start),
    "omega": ("ω", _simple("omega", lambda v: f"ω {v:g}")),
    "steps": ("T1/T2", _steps),
    "beta": ("β", _simple("beta", lambda v: f"β {v:g}")),
    "curvature": ("curvature bound", _curvature),
    "optimizer": ("optimizer", _optimizer),
    "dither": ("dithering", _dither),
    "augmentation": ("augmentation", _augmentation),
    "eval_hflip": ("test-time mirrors", _eval_hflip),
    "loss": ("loss", _loss),
    "batch": ("batch", _simple("batch_size", lambda v: f"batch {v}")),
    "images": ("training images", _simple("train_samples", lambda v: f"{v:,} training images")),
    "epochs": ("epochs", _simple("max_epochs", lambda v: f"{v} epochs")),
}


def describe(record: Record, aspects: Iterable[str]) -> str:
    """The run's settings in words, for the given aspects; the ones it does not record named at the end."""
    said, missing = [], []
    for name in aspects:
        label, phrase = ASPECTS[name]
        text = phrase(record)
        if text is None:
            missing.append(label)
        elif text:
            said.append(text)
    return ", ".join(said + ([f"not recorded: {', '.join(missing)}"] if missing else []))


def common_aspects(records: Sequence[Record], aspects: Iterable[str]) -> list[str]:
    """The aspects every record states alike."""
    return [a for a in aspects if len({ASPECTS[a][1](r) for r in records}) == 1 and ASPECTS[a][1](records[0])
            is not None]


def differences(run: Record, other: Record, aspects: Iterable[str] = tuple(ASPECTS)) -> list[str]:
    """The aspects in which two runs differ, both recorded."""
    out = []
    for name in aspects:
        mine, theirs = ASPECTS[name][1](run), ASPECTS[name][1](other)
        if mine is not None and theirs is not None and mine != theirs:
            out.append(name)
    return out


# ------------------------------------------------------------------------------------------- results blocks

#: Settings shared by the selections below (values as ``setting`` reads them).
DEMO = {"dataset": "fashion_mnist", "pooling": "avg", "hidden": (256,), "start": "feedforward", "omega": 1.3,
        "t1": 12, "t2": 8, "beta": 0.2, "curvature_bound": None, "dither": False, "max_epochs": 2}
PAPER_CONFIG = {"pooling": "avg", "hidden": (256,), "start": "zeros", "t1": 30, "t2": 10, "beta": 0.3,
                "optimizer": "adam", "shift": 0, "hflip": False}
FMNIST_PAPER = {**PAPER_CONFIG, "dataset": "fashion_mnist", "threshold": 0.01, "curvature_bound": 0.9,
                "curvature_iters": 30, "max_epochs": 20, "train_samples": 55000}
UNBOUNDED_FMNIST = {"dataset": "fashion_mnist", "method": "ep", "pooling": "avg", "hidden": (256,), "t1": 30,
                    "threshold": 0.01, "curvature_bound": None, "max_epochs": 20, "train_samples": 55000}
UNBOUNDED_MNIST = {"dataset": "mnist", "method": "ep", "hidden": (256,), "t1": 30, "curvature_bound": None,
                   "max_epochs": 12}

HEADLINE = (  # the paper comparison: (row label, selection)
    ("FashionMNIST", {**FMNIST_PAPER, "method": "ep", "train_samples": 60000}),
    ("FashionMNIST", {**FMNIST_PAPER, "method": "ep"}),
    ("MNIST", {**PAPER_CONFIG, "dataset": "mnist", "method": "ep", "threshold": 0.01, "curvature_bound": 0.9,
               "curvature_iters": UNKNOWN, "max_epochs": 12}),
)


def block_headline(results: Results) -> str:
    rows, firsts = [], []
    for label, criteria in HEADLINE:
        runs = select(results, **criteria)
        dataset = one(runs, "dataset")
        each = per_run(runs) if len(runs) > 1 else "–"
        rows.append([label, f"{one(runs, 'train_samples'):,}", _curvature(runs[0]), pct(PAPER[dataset]),
                     f"**{error_of(runs)}**", points(mean_error(runs) - PAPER[dataset]), seeds_of(runs), each,
                     f"{one(runs, 'max_epochs')}", code(shown_command(runs[0], drop_seed=True))])
        firsts.append(runs[0])
    header = ["dataset", "training images", "curvature penalty", "paper (Lin et al. 2024)", "ours: test error",
              "ours − paper (points)", "runs", "per run", "epochs", "command (seed N: add `--seed_everything N`)"]
    common = common_aspects(firsts, ("pooling", "neuron", "channels", "hidden", "start", "omega", "steps", "beta",
                                     "optimizer", "batch"))
    return (table(header, rows, right=(1, 3, 4, 5, 8)) + f"\n\nEvery row: the 2C2FC network, "
            f"{describe(firsts[0], common)}. Test error of the last epoch's weights, tested once; mean ± sd over "
            "the seeds of a setting, sample standard deviation (n − 1).")


def block_demo(results: Results) -> str:
    runs = select(results, command="python benchmarks/training.py fmnist", method="ep", **DEMO)
    accuracy = 1 - mean_error(runs)
    minutes = statistics.mean(r["wall_s"] for r in runs) / 60
    where = "; ".join(sorted({machine(r) for r in runs}))
    return (f"The 2-epoch demo config reached {pct(accuracy)} test accuracy ({error_of(runs)} test error; "
            f"{seeds_of(runs)}), {minutes:.1f} minutes of training and testing on {where} "
            f"(`python benchmarks/training.py fmnist`, `recipes/configs/fmnist_demo.yaml`).")


RUN_ASPECTS = ("pooling", "neuron", "channels", "hidden", "start", "omega", "steps", "beta", "curvature",
               "optimizer", "dither", "augmentation", "loss", "batch")


def run_table(records: Sequence[Record], common: Sequence[str]) -> str:
    """One row per run, its settings in words less the ``common`` aspects."""
    varying = [a for a in RUN_ASPECTS if a not in common]
    order = sorted(records, key=lambda r: (list(DATASETS).index(r["dataset"]), -r.get("max_epochs", 0),
                                           r["test_error"]))
    rows = [[DATASETS[r["dataset"]], method_label(r), describe(r, varying), f"{r['epochs']:g}"
             + ("" if r.get("complete") else f" of {r.get('max_epochs', '?')}"), f"{r.get('train_samples', 0):,}",
             str(setting(r, "seed")), pct(r["test_error"]), f"{r['wall_s'] / 60:.1f} min",
             ("GPU (model not recorded), host " if setting(r, "accelerator") == "gpu" else "") + machine(r),
             code(shown_command(r))] for r in order]
    header = ["dataset", "method", "settings", "epochs", "training images", "seed", "test error", "wall time",
              "hardware", "command (as recorded)"]
    return table(header, rows, right=(3, 4, 5, 6, 7))


def block_training_runs(results: Results) -> str:
    records = [r for r in results["training"] if r["method"] != "csnn"]  # the CSNN baselines: in block_beyond
    complete = [r for r in records if r.get("complete")]
    partial = [r for r in records if not r.get("complete")]
    common = common_aspects(complete, RUN_ASPECTS)
    out = (f"{len(complete)} complete runs. Every one: {describe(complete[0], common)}.\n\n"
           f"{run_table(complete, common)}")
    if partial:
        text = run_table(partial, common)
        out += (f"\n\nCut before their configured epochs (partial; {len(partial)} run"
                f"{'s' if len(partial) > 1 else ''}, not compared anywhere):\n\n{text}")
    return out


#: The beyond-paper recipes, run by ``benchmarks/training.py`` as they are: the first candidate of each dataset.
FLAGS_OF = {"fashion_mnist": "fmnist", "mnist": "mnist"}  # the dataset's first argument of training.py
RECIPE_COMMAND = "python benchmarks/training.py {flag} --config recipes/configs/{flag}_best.yaml"
RECIPES = {name: RECIPE_COMMAND.format(flag=flag) for name, flag in FLAGS_OF.items()}
#: The flags the chosen configuration adds to its recipe: the full-length lever that is run at three seeds
#: (FashionMNIST: flips only and 40 epochs, paid for by the curvature penalty on every second batch; MNIST: none).
CHOSEN_FLAGS = {"fashion_mnist": "--data.shift 0 --model.curvature.every_n_batches 2 --trainer.max_epochs 40",
                "mnist": ""}
#: The chosen beyond-paper configurations: the runs that differ only in the seed.
BEYOND = {name: {"method": "ep", "command": f"{RECIPES[name]} {CHOSEN_FLAGS[name]}".strip()} for name in FLAGS_OF}
#: The paper configuration's runs with the same 5,000 validation images held out: the curves to compare with.
PAPER_CURVES = {"fashion_mnist": {**FMNIST_PAPER, "method": "ep"},
                "mnist": {**PAPER_CONFIG, "dataset": "mnist", "method": "ep", "threshold": 0.01,
                          "curvature_bound": 0.9, "curvature_iters": UNKNOWN, "max_epochs": 12}}
#: The bar of the beyond-paper work: the mean test error over three seeds to reach.
BAR = {"fashion_mnist": 0.075, "mnist": 0.006}
#: The flags the CSNN baseline adds to its recipe to train as the chosen configuration does (augmentation, epochs).
CSNN_FLAGS = {"fashion_mnist": "--data.shift 0 --trainer.max_epochs 40", "mnist": ""}
#: The baselines of the chosen configuration, one seed each: (label, the flags added to the chosen command), and
#: snnTorch's CSNN with its own recipe.
EP_BASELINES = (("BPTT of EP's objective", "--model.method bptt"),
                ("EP without spikes (θ = 0)", "--model.network.threshold 0"))
CSNN_LABEL = "snnTorch CSNN (BPTT, surrogate gradient)"
CSNN_COMMAND = "python benchmarks/training.py {flag}-csnn --config recipes/configs/{flag}_csnn_best.yaml"


def beyond_baseline_commands(dataset: str) -> list[tuple[str, str]]:
    """The baselines of a dataset's chosen configuration: (the baseline's label, its command)."""
    csnn = f"{CSNN_COMMAND.format(flag=FLAGS_OF[dataset])} {CSNN_FLAGS[dataset]}".strip()
    return [*((label, f"{BEYOND[dataset]['command']} {flags}") for label, flags in EP_BASELINES), (CSNN_LABEL, csnn)]


def block_beyond(results: Results) -> str:
    rows, configs = [], []
    for dataset, runs in beyond_configs(results):
        paper = select(results, **PAPER_CURVES[dataset])
        rows.append([DATASETS[dataset], "EP, beyond-paper config", f"**{error_of(runs)}**", seeds_of(runs),
                     per_run(runs), pct(BAR[dataset]), longest_minutes(runs), machines(runs),
                     code(shown_command(runs[0], drop_seed=True))])
        for label, command in beyond_baseline_commands(dataset):
            for group in runs_of(results, dataset=dataset, command=command):
                rows.append([DATASETS[dataset], label, error_of(group), seeds_of(group), "–", "–",
                             longest_minutes(group), machines(group), code(command)])
        rows.append([DATASETS[dataset], "EP, paper config (same validation split)", error_of(paper),
                     seeds_of(paper), "–", "–", longest_minutes(paper), machines(paper),
                     code(shown_command(paper[0], drop_seed=True))])
        configs.append(runs)
    if not rows:
        return "No complete run of a beyond-paper configuration is recorded yet."
    header = ["dataset", "run", "test error", "runs", "per run", "bar (mean)", "wall time (longest)", "ran on",
              "command (seed N: add `--seed_everything N`)"]
    said = [f"{DATASETS[runs[0]['dataset']]}: {describe(runs[0], RUN_ASPECTS)}, {runs[0]['max_epochs']} epochs, "
            f"{runs[0]['train_samples']:,} training images" for runs in configs]
    return (table(header, rows, right=(2, 5, 6)) + "\n\nThe beyond-paper configurations: " + "; ".join(said)
            + ". Test error of the last epoch's weights on the 10,000 test images, tested once; mean ± sd over "
            "the seeds (sample standard deviation, n − 1). 5,000 training images are held out for the validation "
            "curves in every run of this table.")


def beyond_configs(results: Results) -> list[tuple[str, list[Record]]]:
    """Each dataset with a complete run of its chosen configuration: (the dataset, the configuration's seeds)."""
    return [(dataset, groups[0]) for dataset, criteria in BEYOND.items() if (groups := runs_of(results, **criteria))]


def beyond_recipe(results: Results, dataset: str) -> list[Record]:
    """The seeds of the dataset's recipe run as it is (the first candidate; empty when none is recorded)."""
    groups = runs_of(results, dataset=dataset, method="ep", command=RECIPES[dataset])
    return groups[0] if groups else []


def beyond_levers(results: Results, dataset: str) -> list[tuple[str, list[Record]]]:
    """The full-length lever runs on a dataset's recipe, the chosen configuration among them where it adds flags:
    (the flags added to the recipe's command, the seeds); the baselines are not levers."""
    baselines = {command for _, command in beyond_baseline_commands(dataset)}
    prefix = RECIPES[dataset] + " "
    levers = []
    for group in runs_of(results, dataset=dataset):
        command = shown_command(group[0], drop_seed=True)
        if command.startswith(prefix) and command not in baselines:
            levers.append((command.removeprefix(prefix), group))
    return levers


def block_beyond_summary(results: Results) -> str:
    rows = []
    for dataset, config in beyond_configs(results):
        flags, best = min([("", config), *beyond_levers(results, dataset)], key=lambda lever: mean_error(lever[1]))
        chosen = bool(flags) and flags == CHOSEN_FLAGS[dataset]
        met = len(config) >= 3 and mean_error(config) <= BAR[dataset]
        rows.append([DATASETS[dataset], pct(BAR[dataset]), f"{error_of(config)}; {seeds_of(config)}",
                     f"{error_of(best)}; {seeds_of(best)}" + ("" if not flags or chosen else f", with {code(flags)}"),
                     error_of(select(results, **PAPER_CURVES[dataset])), "**met**" if met else "not yet"])
    if not rows:
        return "No complete run of a beyond-paper configuration is recorded yet."
    header = ["dataset", "bar (mean of 3 seeds)", "beyond-paper config", "best full-length run so far",
              "paper config, same split", "bar met"]
    return (table(header, rows, right=(1,)) + "\n\nTest error on the 10,000 test images, 5,000 training images held "
            "out; the configurations, their levers and baselines are in [Beyond the paper](docs/beyond.md).")


def block_beyond_levers(results: Results) -> str:
    rows = []
    for dataset in FLAGS_OF:
        base = beyond_recipe(results, dataset)
        for flags, group in beyond_levers(results, dataset) if base else ():
            chosen = " (the beyond-paper config)" if flags == CHOSEN_FLAGS[dataset] else ""
            rows.append([DATASETS[dataset], code(flags) + chosen, error_of(group), seeds_of(group), error_of(base),
                         points(mean_error(group) - mean_error(base)), longest_minutes(group), machines(group)])
    if not rows:
        return "No full-length lever run of a beyond-paper recipe is recorded yet."
    header = ["dataset", "lever (flags added to the recipe's command)", "test error", "runs", "the recipe",
              "lever − recipe (points)", "wall time", "ran on"]
    recipes = [RECIPES[name] for name, label in DATASETS.items() if any(row[0] == label for row in rows)]
    return (table(header, rows, right=(2, 4, 5, 6)) + "\n\nEach lever: the recipe's command (`" +
            "`, `".join(recipes) + "`) with the flags shown added, seed 0 unless stated (the same initial weights "
            "and batch order as the recipe's seed 0).")


@dataclass(frozen=True)
class Comparison:
    """A row comparing two settings: ``run`` against ``baseline`` (selections), under a lever's name."""

    lever: str
    run: dict[str, Any]
    baseline: dict[str, Any]


def in_words(record: Record, aspects: Sequence[str], method: str | None = None) -> str:
    """The record's ``aspects`` in words (an aspect that is off reads "no <aspect>"), after ``method`` if given."""
    return ", ".join(([method] if method else []) + [ASPECTS[a][1](record) or f"no {ASPECTS[a][0]}" for a in aspects])


def comparison_table(results: Results, comparisons: Sequence[Comparison]) -> str:
    rows = []
    for c in comparisons:
        run, base = select(results, **c.run), select(results, **c.baseline)
        changed = differences(run[0], base[0], ("pooling", "neuron", "hidden", "start", "omega", "steps", "beta",
                                                "curvature", "optimizer", "dither", "augmentation", "images",
                                                "epochs"))
        method_run, method_base = method_label(run[0]), method_label(base[0])
        shown = method_run != method_base
        label_run, label_base = (in_words(run[0], changed, method_run if shown else None),
                                 in_words(base[0], changed, method_base if shown else None))
        rows.append([c.lever, DATASETS[one(run, "dataset")], label_run, error_of(run), label_base, error_of(base),
                     points(mean_error(run) - mean_error(base))])
    header = ["lever", "dataset", "run", "test error", "against", "test error", "run − against (points)"]
    return table(header, rows, right=(3, 5, 6))


WHAT_HELPED = (
    Comparison("curvature bound", {**UNBOUNDED_FMNIST, "curvature_bound": 0.9, "curvature_iters": UNKNOWN,
                                   "optimizer": "adam"}, UNBOUNDED_FMNIST),
    Comparison("curvature bound", {**UNBOUNDED_MNIST, "curvature_bound": 0.9, "curvature_iters": UNKNOWN},
               UNBOUNDED_MNIST),
    Comparison("power-iteration rounds", {**FMNIST_PAPER, "method": "ep"},
               {**FMNIST_PAPER, "method": "ep", "curvature_iters": UNKNOWN}),
    Comparison("all training images, no validation split", {**FMNIST_PAPER, "method": "ep", "train_samples": 60000},
               {**FMNIST_PAPER, "method": "ep"}),
)
WHAT_DID_NOT_HELP = (
    Comparison("wider hidden layer", {**UNBOUNDED_FMNIST, "hidden": (512,)}, UNBOUNDED_FMNIST),
    Comparison("wider hidden layer", {**UNBOUNDED_MNIST, "hidden": (512,), "max_epochs": 20}, UNBOUNDED_MNIST),
    Comparison("AdamW weight decay", {**FMNIST_PAPER, "method": "ep", "optimizer": "adamw", "weight_decay": 0.05},
               {**FMNIST_PAPER, "method": "ep"}),
    Comparison("AdamW weight decay", {**FMNIST_PAPER, "method": "ep", "optimizer": "adamw", "weight_decay": 0.1},
               {**FMNIST_PAPER, "method": "ep"}),
    Comparison("AdamW weight decay", {**FMNIST_PAPER, "method": "ep", "optimizer": "adamw", "curvature_iters": 10},
               {**FMNIST_PAPER, "method": "ep", "curvature_iters": UNKNOWN}),
    Comparison("max pooling", {**UNBOUNDED_FMNIST, "pooling": "max"}, UNBOUNDED_FMNIST),
    Comparison("dithered Sigma-Delta", {**DEMO, "method": "ep", "threshold": 0.01, "dither": True},
               {**DEMO, "method": "ep", "threshold": 0.01}),
    Comparison("dithered Sigma-Delta", {**DEMO, "method": "ep", "threshold": 0.01, "dither": True, "beta": 0.05},
               {**DEMO, "method": "ep", "threshold": 0.01}),
    Comparison("truncated BPTT", {**DEMO, "method": "bptt", "threshold": 0.01, "bptt_truncate": 8},
               {**DEMO, "method": "ep", "threshold": 0.01}),
    Comparison("truncated BPTT", {**PAPER_CONFIG, "dataset": "fashion_mnist", "method": "bptt", "threshold": 0.01,
                                  "curvature_bound": None, "max_epochs": 2, "bptt_truncate": 10},
               {**PAPER_CONFIG, "dataset": "fashion_mnist", "method": "ep", "threshold": 0.01,
                "curvature_bound": None, "max_epochs": 2}),
    Comparison("feed-forward start, fewer steps", {"dataset": "fashion_mnist", "method": "ep", "t1": 12,
                                                   "max_epochs": 40, "curvature_bound": None}, UNBOUNDED_FMNIST),
    Comparison("feed-forward start, fewer steps", {"dataset": "mnist", "method": "ep", "t1": 20, "max_epochs": 30},
               UNBOUNDED_MNIST),
)


def block_what_helped(results: Results) -> str:
    return comparison_table(results, WHAT_HELPED)


def block_what_did_not_help(results: Results) -> str:
    return comparison_table(results, WHAT_DID_NOT_HELP)


BPTT_PAIRS = (  # (BPTT run, EP run of the same settings)
    ({**DEMO, "method": "bptt", "threshold": 0.01, "bptt_objective": "nudged"},
     {**DEMO, "method": "ep", "threshold": 0.01}),
    ({**DEMO, "method": "bptt", "threshold": 0.0, "bptt_objective": "nudged"},
     {**DEMO, "method": "ep", "threshold": 0.0}),
    ({**FMNIST_PAPER, "method": "bptt", "bptt_objective": "nudged"}, {**FMNIST_PAPER, "method": "ep"}),
    ({**FMNIST_PAPER, "method": "bptt", "threshold": 0.0, "bptt_objective": "nudged"},
     {**FMNIST_PAPER, "method": "ep", "threshold": 0.0}),
    ({**DEMO, "method": "bptt", "threshold": 0.01, "bptt_truncate": 8}, {**DEMO, "method": "ep", "threshold": 0.01}),
    ({**DEMO, "method": "bptt", "threshold": 0.01, "bptt_truncate": 8, "omega": 1.0},
     {**DEMO, "method": "ep", "threshold": 0.01}),
    ({**DEMO, "method": "bptt", "threshold": 0.01, "bptt_truncate": 4}, {**DEMO, "method": "ep", "threshold": 0.01}),
    ({**PAPER_CONFIG, "dataset": "fashion_mnist", "method": "bptt", "threshold": 0.01, "curvature_bound": None,
      "max_epochs": 2, "bptt_truncate": 10},
     {**PAPER_CONFIG, "dataset": "fashion_mnist", "method": "ep", "threshold": 0.01, "curvature_bound": None,
      "max_epochs": 2}),
)


def block_ep_vs_bptt(results: Results) -> str:
    rows, curves = [], []
    for bptt_criteria, ep_criteria in BPTT_PAIRS:
        bptt, ep = select(results, **bptt_criteria), select(results, **ep_criteria)
        other = [ASPECTS[a][1](bptt[0]) + f" (EP: {ASPECTS[a][1](ep[0])})" for a in differences(bptt[0], ep[0])]
        settings = describe(ep[0], ("neuron", "start", "omega", "steps", "beta", "curvature"))
        rows.append([settings, f"{one(ep, 'max_epochs')}", method_label(bptt[0]) + "".join(f", {o}" for o in other),
                     error_of(ep), error_of(bptt), points(mean_error(bptt) - mean_error(ep))])
        if len(bptt) == len(ep) == 1 and bptt[0].get("curve") and ep[0].get("curve") and ep[0]["max_epochs"] > 2:
            curves.append((_neuron(ep[0]), ep[0], bptt[0]))
    out = table(["settings (both runs)", "epochs", "BPTT variant", "EP test error", "BPTT test error",
                 "BPTT − EP (points)"], rows,
                right=(1, 3, 4, 5))
    if curves:
        by_run = [{p["epoch"]: p["val_acc"] for p in r["curve"]} for _, ep, bptt in curves for r in (ep, bptt)]
        epochs = sorted({e for accs in by_run for e in accs if float(e).is_integer()})
        header = ["epoch"] + [f"{name}: {m}" for name, _, _ in curves for m in ("EP", "BPTT")]
        body = [[f"{e:g}"] + [pct(accs.get(e)) for accs in by_run] for e in epochs]
        out += ("\n\nValidation accuracy after each epoch of the full-length pairs (the held-out validation images "
                "of the same runs):\n\n" + table(header, body, right=tuple(range(len(header)))))
    return out


def block_thresholds(results: Results) -> str:
    criteria = {k: v for k, v in DEMO.items()}
    groups = sorted(runs_of(results, method="ep", **criteria), key=lambda g: setting(g[0], "threshold"))
    rows = []
    for runs in groups:
        rates = one(runs, "test_spike_rates") if len(runs) == 1 else None
        rows.append([_neuron(runs[0]), error_of(runs),
                     " / ".join(f"{x:.2f}" for x in rates) if rates else "–",
                     f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f} min", machines(runs)])
    return table(["network", "test error", "test spike rate, layers 1–4 (spikes per neuron per step)", "wall time",
                  "hardware"], rows, right=(1, 3))


POOLING_RUNS = ({**UNBOUNDED_FMNIST}, {**UNBOUNDED_FMNIST, "pooling": "max"},
                {**UNBOUNDED_FMNIST, "pooling": "max", "threshold": 0.0})


def block_pooling(results: Results) -> str:
    base = select(results, **POOLING_RUNS[0])
    rows = []
    for i, criteria in enumerate(POOLING_RUNS):
        runs = select(results, **criteria)
        run = runs[0]
        curve = run.get("curve") or []
        cosines = [p["alignment_cos_all"] for p in curve if "alignment_cos_all" in p]
        rows.append([f"{run['pooling']} pooling", _neuron(run), error_of(runs),
                     points(mean_error(runs) - mean_error(base)) if i else "–",
                     pct(curve[-1]["val_acc"]) if curve else "–",
                     small(curve[-1].get("val_change_free")) if curve else "–",
                     f"{min(cosines):.2f}–{max(cosines):.2f}" if cosines else "not measured",
                     f"{run['wall_s'] / 60:.1f} min, {machine(run)}"])
    header = ["pooling", "network", "test error", "against spiking avg (points)", "last validation accuracy",
              "free phase's largest last change (last validation)", "EP-vs-BPTT cosine along training",
              "wall time, hardware"]
    shared = describe(base[0], ("channels", "hidden", "steps", "beta", "curvature", "epochs", "start", "omega"))
    out = f"All three: {shared}.\n\n" + table(header, rows, right=(2, 3, 4, 5))
    routes = []
    for criteria in POOLING_RUNS:
        run = select(results, **criteria)[0]
        history = run.get("activations")
        if not history:
            continue
        forward, backward = (history[0]["quantities"].index(q) for q in ("forward_sum", "backward_sum"))
        for where, point in (("start", history[0]), ("middle", history[len(history) // 2]), ("end", history[-1])):
            routes.append([f"{_neuron(run)}, {run['pooling']}", f"{where} ({point['step']:,})"]
                          + [signed(f"{row[forward]:.1f} / {row[backward]:.1f}") for row in point["mean"]])
    if routes:
        layers = max(len(r) for r in routes) - 2
        out += ("\n\nThe paper's Figure 2 statistic along these runs (`ActivationDiagnostics`): the per-sample "
                "summed forward route P(W∗X) and backward route Wᵀ∗Pᵀ(X) of each conv layer in the nudged phase, "
                "batch mean:\n\n" + table(["run", "when (step)"] + [f"conv{i + 1} forward / backward"
                                                                    for i in range(layers)],
                                          routes, right=tuple(range(2, layers + 2))))
    return out


# ----------------------------------------------------------------------------------------- benchmark blocks


def block_memory(results: Results) -> str:
    records = results["memory"]
    by = {(r["method"], r["T1"]): r for r in records}
    t1s = sorted({r["T1"] for r in records})
    rows = []
    for t1 in t1s:
        ep, bptt = by[("ep", t1)], by[("bptt", t1)]
        rows.append([str(t1), mib(ep["saved_bytes"]), mib(bptt["saved_bytes"]),
                     ratio(bptt["saved_bytes"] / ep["saved_bytes"]), mib(ep["peak_bytes"]), mib(bptt["peak_bytes"]),
                     ratio(bptt["peak_bytes"] / ep["peak_bytes"])])
    slope = statistics.linear_regression([float(t) for t in t1s], [by[("bptt", t)]["saved_bytes"] for t in t1s])
    ep_saved = sorted({by[("ep", t)]["saved_bytes"] for t in t1s})
    ep_text = (f"EP saves {mib(ep_saved[0])} at every T1" if len(ep_saved) == 1 else
               f"EP saves {mib(ep_saved[0])}–{mib(ep_saved[-1])}")
    return (f"One training step of the 2C2FC net (hidden {one(records, 'hidden')}, {one(records, 'pooling')} "
            f"pooling), batch {one(records, 'batch')}, T2 = {one(records, 'T2')}, on `{one(records, 'data')}`; "
            f"peak measured as {one(records, 'peak_source')}. {produced_by(records, 'memory')}\n\n"
            + table(["T1", "EP saved", "BPTT saved", "BPTT / EP", "EP peak", "BPTT peak", "BPTT / EP"], rows,
                    right=range(7))
            + f"\n\n{ep_text}; BPTT's saved bytes grow by {mib(slope.slope)} per free step (least-squares slope "
              f"over T1 = {', '.join(map(str, t1s))}; each method and T1 in a fresh process).")


def _constant(script: str, name: str) -> Any:
    """A module-level constant of a benchmark script, read without importing it (the scripts import torch)."""
    tree = ast.parse((ROOT / "benchmarks" / script).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RenderError(f"benchmarks/{script} has no constant {name}")


def block_throughput(results: Results) -> str:
    records = [r for r in results["throughput"] if r.get("kind") == "throughput"]
    ops = {r["variant"]: r["floor_ms"] for r in results["throughput"] if r.get("kind") == "floor_op"}
    goals = _constant("throughput.py", "ENGINE_FLOOR_GOAL")
    order = {("explicit", "async", False): 0, ("explicit", "sync", False): 1, ("autograd", "sync", False): 2,
             ("explicit", "async", True): 3}
    records = sorted(records, key=lambda r: (r["pooling"] != "avg", order[(r["dynamics"], r["update"],
                                                                           bool(r["threshold"]))]))
    rows = [[r["pooling"], "autograd of the energy (reference-style)" if r["dynamics"] == "autograd" else "explicit",
             r["update"], f"{r['threshold']:g}", f"{r['samples_per_s']:.0f}", f"{r['ms_per_dynamics_step']:.2f}",
             f"{r['engine_floor_ms']:.2f}", f"{r['step_over_engine_floor']:.2f}", f"{r['conv_floor_ms']:.2f}",
             f"{r['step_over_conv_floor']:.2f}"] for r in records]
    header = ["pooling", "dynamics", "update", "θ", "samples/s", "ms per dynamics step", "engine floor, ms",
              "step / engine floor", "convolutions alone, ms", "step / convolutions alone"]
    lines = []
    for pooling, goal in goals.items():
        row = next((r for r in records if r["pooling"] == pooling and r["dynamics"] == "explicit"
                    and r["update"] == "async" and not r["threshold"]), None)
        by = {(r["dynamics"], r["update"]): r for r in records if r["pooling"] == pooling and not r["threshold"]}
        if row is None or ("autograd", "sync") not in by:
            continue
        met = "met" if row["step_over_engine_floor"] <= goal else "not met"
        speedup = by[("explicit", "sync")]["samples_per_s"] / by[("autograd", "sync")]["samples_per_s"]
        lines.append(f"- {pooling} pooling: a non-spiking explicit async dynamics step costs "
                     f"{row['step_over_engine_floor']:.3f}× its engine floor (goal ≤ {goal}×: **{met}**); explicit "
                     f"sync dynamics train at {speedup:.2f}× the samples/s of the autograd dynamics.")
    r0 = records[0]
    op_rows = [[op, f"{ms:.3f}"] for op, ms in ops.items()]
    return (f"One EP training step (free phase + ±β phases + backward + SGD) of the 2C2FC net (hidden "
            f"{one(records, 'hidden')}), batch {one(records, 'batch')}, T1 = {one(records, 'T1')}, "
            f"T2 = {one(records, 'T2')}, on `{r0['data']}`; medians of {one(records, 'repeats')} rounds. "
            f"{produced_by(records, 'throughput')}\n\n" + table(header, rows, right=range(3, 10)) + "\n\n"
            + "\n".join(lines) + "\n\nThe floor's operations, each timed alone on the step's shapes (ms):\n\n"
            + table(["operation", "ms"], op_rows, right=(1,)))


def _training_seconds(r: Record) -> float:
    """Training seconds a setting ran: to the target, or its whole budget (its last evaluation's clock)."""
    if r["reached"]:
        return r["seconds"]
    evaluations = r.get("evaluations") or []
    return evaluations[-1]["seconds"] if evaluations else r["budget_s"]


def _accuracy_then(r: Record) -> str:
    """The full-test accuracy when the target was reached, else the best one measured (or on the first 2,000
    test images where the full test set was never evaluated)."""
    if r["reached"]:
        return pct(r["test_accuracy"]) if "test_accuracy" in r else "not recorded"
    evaluations = r.get("evaluations") or []
    full = [e for e in evaluations if e.get("test_accuracy") is not None]
    if full:
        best = max(full, key=lambda e: e["test_accuracy"])
        return f"best {pct(best['test_accuracy'])} (at {best['seconds']:,.0f} s)"
    if evaluations:
        best = max(evaluations, key=lambda e: e["accuracy_2000"])
        return f"best {pct(best['accuracy_2000'])} on the first 2,000 test images (at {best['seconds']:,.0f} s)"
    if r.get("test_accuracy") is not None:
        return f"last {pct(r['test_accuracy'])}"
    return f"last {pct(r['last_accuracy_2000'])} on the first 2,000 test images"


def _dynamics(r: Record) -> str:
    if "t1" not in r:
        return "not recorded"
    start = {"zeros": "from zeros", "feedforward": "feed-forward start"}.get(r["start"], r["start"])
    bound = "" if r.get("curvature_bound") is None else f", curvature bound {r['curvature_bound']:g}"
    return f"{r['dynamics']} {r['update']}, {start}, ω {r['omega']:g}, T1 {r['t1']} / T2 {r['t2']}{bound}"


#: Fields of the current time-to-accuracy protocol (``--part``, a budget, the full test set) that an older run lacks.
TTA_PROTOCOL = ("budget_s", "test_samples", "t1", "t2", "update", "dynamics", "start", "omega")


def time_to_accuracy(results: Results, source: str) -> str:
    records = results[source]
    ours = next((r for r in records if r["setting"] == "ours"), None)
    rows = []
    for r in records:
        if r["reached"]:
            seconds = f"**{r['seconds']:,.0f}**" if r["seconds"] >= 1000 else f"**{r['seconds']:.1f}**"
            samples = f"{r['samples']:,}"
        else:
            seconds = f"> {r['budget_s']:,.0f} (not reached)"
            samples = f"{r['samples']:,} in {_training_seconds(r):,.0f} s"
        against = "–"
        if ours is not None and ours["reached"] and r is not ours:
            against = (f"{r['seconds'] / ours['seconds']:.1f}×" if r["reached"]
                       else f"> {r['budget_s'] / ours['seconds']:.1f}×")
        rows.append([r["setting"], _dynamics(r), seconds, samples, _accuracy_then(r),
                     f"{r['samples'] / _training_seconds(r):.0f}", against])
    lacking = [f for f in TTA_PROTOCOL if any(f not in r for r in records)]
    threshold = one(records, "threshold")
    network = "non-spiking" if not threshold else f"spiking, θ = {threshold:g}"
    target = f"{pct(one(records, 'target_accuracy'), 0)} accuracy"
    if lacking:
        what = (f"**An older protocol.** These records lack the fields of the current one "
                f"({', '.join(f'`{f}`' for f in lacking)}), so the settings, the evaluation set and the budget "
                f"they ran with are not recorded. What they hold: the 2C2FC network, {network}, until {target} "
                f"({DATASETS[one(records, 'dataset')]}).")
    else:
        what = (f"The 2C2FC network ({network}) from the same weights on the same batches until {target} on the "
                f"{one(records, 'test_samples'):,} images of the {DATASETS[one(records, 'dataset')]} test set "
                f"(evaluated outside the clock), {one(records, 'budget_s'):,.0f} training seconds at most per "
                f"setting.")
    header = ["setting", "dynamics and steps", "training s to target", "samples", "test accuracy then",
              "samples/s", "time against ours"]
    return f"{what} {produced_by(records, source)}\n\n" + table(header, rows, right=(2, 3, 5, 6))


def block_time_to_accuracy_main(results: Results) -> str:
    return time_to_accuracy(results, "time_to_accuracy_main")


def block_time_to_accuracy_controls(results: Results) -> str:
    return time_to_accuracy(results, "time_to_accuracy_controls")


def block_time_to_accuracy_all(results: Results) -> str:
    return time_to_accuracy(results, "time_to_accuracy")


def flag_pairs(command: str) -> list[tuple[str, str]]:
    """A command's ``--flag value`` / ``--flag=value`` pairs, in order (a flag without a value pairs with '')."""
    tokens, pairs = shlex.split(command), []
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            name, _, value = token.partition("=")
            if not value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
            pairs.append((name, value))
    return pairs


def shell_flags(pairs: Iterable[tuple[str, str]]) -> str:
    """``--flag value`` pairs as a shell takes them: each value quoted where it needs it (a flag alone where it has
    none)."""
    return " ".join(f"{flag} {shlex.quote(value)}" if value else flag for flag, value in pairs)


def lever_study(results: Results, source: str, base: str) -> str:
    """A short lever study: each record's flags beyond those all share, its test error against the record with no
    lever (``base`` names it), all from seed 0 with the same batch order."""
    records = results[source]
    commands = [shown_command(r) for r in records]
    pairs = [flag_pairs(c) for c in commands]
    shared = set.intersection(*(set(p) for p in pairs))
    base_run = next(r for r, p in zip(records, pairs, strict=True) if set(p) == shared)
    rows = [[shell_flags(pair for pair in p if pair not in shared) or f"none ({base})",
             pct(r["test_error"]), "–" if r is base_run else points(r["test_error"] - base_run["test_error"]),
             f"{r['wall_s'] / 60:.1f} min"] for r, p in zip(records, pairs, strict=True)]
    protocol = shell_flags(pair for pair in pairs[0] if pair in shared and pair[0] != "--record")
    (recipe,) = {shlex.join(itertools.takewhile(lambda t: not t.startswith("--"), shlex.split(c))) for c in commands}
    where = "; ".join(sorted({machine(r) for r in records}))
    return (f"Each lever changes {base}, from seed 0 with the same batch order (the same initial weights where "
            f"the network's shape is unchanged): "
            f"`{recipe} {protocol} --record benchmarks/results/{source}.json "
            f"[lever flags]` ({where}; wall times with the other core busy, as each record's note says). Test "
            f"error on the 10,000 test images.\n\n"
            + table(["lever (flags added)", "test error", f"lever − {base} (points)", "wall time"], rows,
                    right=(1, 2, 3)))


def block_step_cost(results: Results) -> str:
    records = results["step_cost"]
    base = next(r for r in records if r["variant"] == "")
    rows = [[code(r["variant"]) if r["variant"] else "none (the configuration)", str(r["batch_size"]),
             f"{r['ms_per_batch']:.0f} ms", f"{r['train_s_per_epoch']:.0f} s", f"{r['relative_epoch_cost']:.2f}×",
             f"{r['epochs_in_budget']:.0f}"] for r in records]
    budget = f"{one(records, 'budget_min'):g} min"
    return (f"A training batch of `{base['config']}` with each lever's flags added, from the configuration's initial "
            f"weights on the same batches: the median of {one(records, 'repeats')} rounds, each the mean over "
            f"{one(records, 'timed_batches')} batches after a warm-up batch (loading and augmenting the batch, the "
            f"phases, the curvature penalty where it acts, backward, the optimizer step). An epoch: that time over "
            f"the {one(records, 'train_samples'):,} training images at the lever's batch size, "
            f"training alone (no validation or checkpoints): a floor of an epoch's wall time; so the epochs in "
            f"{budget} are a ceiling. {produced_by(records, 'step_cost')}\n\n"
            + table(["lever (flags added)", "batch", "a batch", "an epoch (training)", "epoch cost",
                     f"epochs in {budget} (at most)"], rows, right=range(1, 6)))


def block_levers(results: Results) -> str:
    records = [r for r in results["levers"] if r.get("part") == "epoch"]
    rows = [[r["setting"], f"{r['steps_per_batch']:g}", f"{r['train_s']:.1f}", pct(r["val_acc"]),
             small(r["val_change"]), small(r["train_change"])] for r in records]
    return (f"The epoch part: the spiking 2C2FC (θ = {one(records, 'threshold'):g}), one epoch per setting from the "
            f"same weights on the same batches; validation accuracy on the held-out validation images with the "
            f"setting's own free phase; seconds count training only (the curvature penalty inside them). "
            f"{produced_by(records, 'levers')}\n\n"
            + table(["setting", "steps a batch", "train s", "val acc", "val last change", "train last change"],
                    rows, right=range(1, 6)))


def curvature(results: Results, source: str) -> str:
    records = results[source]
    trained = [r for r in records if r["phase"] == "trained"]
    settled = {r["checkpoint"]: r for r in records if r["phase"] != "trained"}
    rows = []
    for r in trained:
        other = settled.get(r["checkpoint"])
        rows.append([DATASETS[r["dataset"]], str(r["epoch"] + 1), f"{r['eig_median']:.2f}", f"{r['eig_p90']:.2f}",
                     f"{r['eig_max']:.2f} / {other['eig_max']:.2f}" if other else f"{r['eig_max']:.2f} / –",
                     pct(r["frac_not_minimum"], 1),
                     f"{small(r['last_change'])} / {small(other['last_change']) if other else '–'}"])
    t1s = sorted({r["t1"] for r in trained})
    other_t1 = sorted({r["t1"] for r in settled.values()})
    header = ["dataset", "after epoch", "λ median", "λ 90th pct", "λ max (spiking / not)",
              "spiking end states with λ ≥ 1", "last change (spiking / not)"]
    return (f"On the first {one(records, 'samples')} test images of each checkpoint's dataset: the end of the free "
            f"phase as trained (spiking, T1 = {', '.join(map(str, t1s))}) and of a "
            f"{', '.join(map(str, other_t1))}-step phase of the same weights without spikes. λ median and "
            f"90th percentile of the spiking end states. {produced_by(records, source)}\n\n"
            + table(header, rows, right=range(1, 7)))


def block_curvature(results: Results) -> str:
    return curvature(results, "curvature")


def block_curvature_bound(results: Results) -> str:
    return curvature(results, "curvature_bound")


def _cell(r: Record) -> str:
    if not r["spiking"]:
        return "non-spiking"
    dither = f", dithered (energy averaged over the last {r['average_last']} nudged steps)" if r["dither"] else ""
    return f"spiking, θ = {r['threshold']:g}{dither}"


def _cells(records: Sequence[Record]) -> tuple[list[tuple], list[float], dict[tuple, Record]]:
    """The alignment benchmark's cells in display order, its betas, and each (cell, beta)'s summary record."""
    summary = [r for r in records if r.get("kind") == "alignment" and r["param"] == "all"]
    betas = sorted({r["beta"] for r in summary})
    keys = sorted({(r["spiking"], r["threshold"], r["pooling"], r["dither"]) for r in summary},
                  key=lambda k: (k[0], -k[1], k[2] != "avg", k[3]))
    by = {(r["spiking"], r["threshold"], r["pooling"], r["dither"], r["beta"]): r for r in summary}
    return keys, betas, by


def block_alignment(results: Results) -> str:
    records = results["alignment"]
    keys, betas, by = _cells(records)
    beta_head = [f"β = {b:g}" for b in betas]

    def rows(value: Callable[[Record], str], keep: Callable[[tuple], bool] = lambda k: True) -> list[list[str]]:
        return [[_cell(by[(*k, betas[0])]), k[2], *(value(by[(*k, b)]) for b in betas)] for k in keys if keep(k)]

    r0 = next(r for r in records if r.get("kind") == "alignment")
    cosines = rows(lambda r: f"{cosine(r['cosine'])} ({cosine(r['min_cosine'])})")
    nonspiking = rows(lambda r: f"{cosine(r['cosine_nonspiking'])} ({cosine(r['min_cosine_nonspiking'])})",
                      lambda k: k[0])
    settled = [[_cell(by[(*k, betas[0])]), k[2], small(by[(*k, betas[0])]["last_change"]),
                *(f"{small(by[(*k, b)]['last_change_pos'])} / {small(by[(*k, b)]['last_change_neg'])}"
                  for b in betas)] for k in keys]
    spikes = [[_cell(by[(*k, betas[0])]), k[2], f"{by[(*k, betas[0])]['free_spikes_per_sample']:,.0f}",
               *(f"{by[(*k, b)]['nudged_spikes_per_sample']:,.0f}" for b in betas)] for k in keys if k[0]]
    flips = [r for r in records if r.get("kind") == "activation" and r.get("index_flip") is not None]
    flip_keys = sorted({(r["spiking"], r["threshold"], r["layer"]) for r in flips}, key=lambda k: (k[0], -k[1], k[2]))
    flip_by = {(r["spiking"], r["threshold"], r["layer"], r["beta"]): r["index_flip"] for r in flips}
    flip_rows = [["non-spiking" if not k[0] else f"spiking, θ = {k[1]:g}", k[2],
                  *(small(flip_by.get((*k, b))) for b in betas)] for k in flip_keys]
    n = len(betas)
    return (f"2C2FC (hidden {r0['hidden']}) after {r0['train_steps']} EP training steps, {r0['dtype']}, batch "
            f"{r0['batch']} of `{r0['data']}`, async updates, T1 = {r0['t1']}, T2 = {r0['t2']}; BPTT through the "
            f"same T1 free steps (through the spikes with the straight-through estimator). "
            f"{produced_by(records, 'alignment')}\n\n"
            "Cosine between the EP and the BPTT gradient over all parameters (in brackets: the lowest over the "
            "parameter tensors):\n\n" + table(["network", "pooling", *beta_head], cosines, right=range(2, 2 + n))
            + "\n\nThe spiking cells against the BPTT gradient of the same weights without spikes (the gradient "
            "spiking EP approximates):\n\n" + table(["network", "pooling", *beta_head], nonspiking,
                                                    right=range(2, 2 + n))
            + "\n\nWhat settled: the largest state change in the last step of the free phase, and of the +β / −β "
            "phases:\n\n" + table(["network", "pooling", "free", *(f"+β / −β at {h}" for h in beta_head)], settled,
                                  right=range(2, 3 + n))
            + "\n\nSpikes per sample (all layers) in the free phase and in a nudged phase:\n\n"
            + table(["network", "pooling", "free phase", *(f"nudged, {h}" for h in beta_head)], spikes,
                    right=range(2, 3 + n))
            + "\n\nMax pooling: the fraction of pooling windows whose argmax changes from one step to the next in "
            "the +β phase:\n\n" + table(["network", "layer", *beta_head], flip_rows, right=range(2, 2 + n)))


def block_neuromorphic_cost(results: Results) -> str:
    records = results["neuromorphic_cost"]
    cuts = sorted(int(k.removeprefix("acc_at_")) for k in records[0] if k.startswith("acc_at_"))
    rows = []
    for r in records:
        theta = "—" if r.get("threshold") is None else f"{r['threshold']:g}"
        rows.append([r["label"], theta, str(r["steps"]), pct(r["accuracy"]), count(r["spikes_per_inference"]),
                     count(r["synops_per_inference"]), count(r["events_per_inference"]),
                     count(r["event_synops_per_inference"]), count(r["dense_macs_per_inference"]),
                     f"{r['synops_over_dense']:.3f}", f"{r['event_synops_over_dense']:.3f}",
                     f"{r['latency_mean']:.1f}, {r['latency_p90']:g}",
                     *(pct(r[f"acc_at_{c}"], 1) if r.get(f"acc_at_{c}") is not None else "—" for c in cuts)])
    header = ["network", "θ", "T", "test acc", "spikes / inf.", "SynOps / inf.", "events / inf.",
              "event SynOps / inf.", "dense MACs / inf.", "SynOps / MACs", "event SynOps / MACs",
              "latency (mean, p90)", *(f"acc @ {c}" for c in cuts)]
    by_macs: dict[float, list[str]] = {}
    for r in records:
        by_macs.setdefault(r["input_macs_per_inference"], []).append(r["label"])
    inputs = "; ".join(f"{count(macs)} MACs: {', '.join(labels)}" for macs, labels in by_macs.items())
    command = one(records, "command")
    return (f"Per inference on `{one(records, 'data')}` ({one(records, 'samples'):,} images). SynOps and dense MACs "
            f"exclude the input convolution, which both count once per inference ({inputs}). Run on "
            f"{machine(records[0], full=True)}:\n\n```bash\n{command}\n```\n\n"
            + table(header, rows, right=range(1, len(header))))


def block_baselines(results: Results) -> str:
    records = results["baselines"]
    training = [r for r in records if r["kind"] == "training"]
    memory = [r for r in records if r["kind"] == "memory"]
    steps = sorted({r["T"] for r in memory})
    mem = {(r["key"], r["T"]): r for r in memory}
    ep = next(r for r in training if r["key"] == "ep")
    rows = []
    for r in training:
        cells = [f"{mib(mem[(r['key'], t)]['peak_bytes']).removesuffix(' MiB')} "
                 f"({mib(mem[(r['key'], t)]['saved_bytes']).removesuffix(' MiB')})" if (r["key"], t) in mem else "–"
                 for t in steps]
        rows.append([f"{r['method']}, {r['network']}", r["steps"], pct(r["test_error"]), f"{r['s_per_epoch']:.0f}",
                     f"{r['s_per_epoch'] / ep['s_per_epoch']:.2f}×", *cells])
    header = ["training", "T (trained)", f"test error ({one(training, 'epochs')} ep.)", "s / epoch",
              "s / epoch against EP", *(f"step memory T={t}, MiB" for t in steps)]
    return (f"Each contender's recipe demo config (`{'`, `'.join(sorted({r['config'] for r in training}))}`), "
            f"{one(training, 'epochs')} epochs on {one(training, 'train_samples'):,} training images, no "
            f"validation; test error on {one(training, 'test_samples'):,} test images. Step memory: one training "
            f"step at batch {one(memory, 'batch')} of `{one(memory, 'memory_data')}`, each in a fresh process: peak "
            f"resident-set growth over the step, autograd's saved-for-backward bytes in brackets; T is T1 for the "
            f"convergent SNN, `num_steps` for the CSNN. {produced_by(records, 'baselines')}\n\n"
            + table(header, rows, right=range(2, len(header))))


def block_eval_hflip(results: Results) -> str:
    records = results["eval_hflip"]
    trained = {r["command"]: r for r in results["training"]}  # the records the checkpoints were matched to
    rows = [[code(shown_command(trained[r["trained_by"]])) if r["trained_by"] else code(r["checkpoint"]),
             f"{r['global_step']:,}", pct(r["test_error"]),
             pct(r["test_error_eval_hflip"]), points(r["difference"]),
             f"{r['test_s']:.0f} s / {r['test_s_eval_hflip']:.0f} s"] for r in records]
    return (f"Each row: the last weights of a recorded training run (its command), tested on the "
            f"{one(records, 'test_images'):,} test images twice: each image alone, as the run's record has it, "
            f"and with `--model.eval_hflip true` (each image's logits averaged with its left-right mirror's). "
            f"Nothing is retrained, so the difference is the lever's alone. {produced_by(records, 'eval_hflip')}\n\n"
            + table(["trained by", "optimizer steps", "test error", "with mirror averaging",
                     "difference (points)", "test time (alone / with)"], rows, right=range(1, 6)))


@dataclass(frozen=True)
class Block:
    """A generated block: its renderer, the results files it reads, and what it holds."""

    render: Callable[[Results], str]
    sources: tuple[str, ...]
    holds: str


def lever_study_block(source: str, base: str, holds: str) -> Block:
    """The block of a short lever study: ``lever_study`` of the results file ``source`` against ``base``."""
    return Block(functools.partial(lever_study, source=source, base=base), (source,), holds)


BLOCKS: dict[str, Block] = {
    "headline": Block(block_headline, ("training",),
                      "the paper comparison: paper vs our test error per dataset (mean ± sd over seeds), commands"),
    "demo": Block(block_demo, ("training",), "one sentence: the 2-epoch demo config's recorded test accuracy"),
    "beyond": Block(block_beyond, ("training",),
                    "the beyond-paper configurations: test error (mean ± sd), baselines, the paper config"),
    "beyond_summary": Block(block_beyond_summary, ("training",),
                            "the beyond-paper work in one table: the bar, the config, the best run so far"),
    "beyond_levers": Block(block_beyond_levers, ("training",),
                           "full-length levers on the beyond-paper configurations, each vs the configuration"),
    "training_runs": Block(block_training_runs, ("training",),
                           "every complete training run (and the partial ones apart), with its command"),
    "ep_vs_bptt": Block(block_ep_vs_bptt, ("training",),
                        "EP against BPTT of the same settings, and validation accuracy by epoch of the full pairs"),
    "pooling": Block(block_pooling, ("training",),
                     "max vs average pooling over full runs, and the Figure 2 route sums along them"),
    "what_helped": Block(block_what_helped, ("training",), "levers that lowered the test error, each vs its baseline"),
    "what_did_not_help": Block(block_what_did_not_help, ("training",),
                               "levers that did not lower the test error, each vs its baseline"),
    "thresholds": Block(block_thresholds, ("training",), "the demo config at each Sigma-Delta threshold"),
    "memory": Block(block_memory, ("memory",), "EP vs BPTT memory of one training step as T1 grows"),
    "throughput": Block(block_throughput, ("throughput",), "samples/s and a dynamics step against its engine floor"),
    "time_to_accuracy_main": Block(block_time_to_accuracy_main, ("time_to_accuracy_main",),
                                   "ours vs the reference-style setting to the target test accuracy"),
    "time_to_accuracy_controls": Block(block_time_to_accuracy_controls, ("time_to_accuracy_controls",),
                                       "ours vs the two one-change controls"),
    "time_to_accuracy_all": Block(block_time_to_accuracy_all, ("time_to_accuracy",),
                                  "the record in time_to_accuracy.json, labelled with its protocol"),
    "levers_accuracy": lever_study_block(
        "levers_accuracy", "the paper config",
        "a few epochs per accuracy lever (augmentation, read-out, learning rate): test error"),
    "levers_capacity": lever_study_block(
        "levers_capacity", "the flips-only config",
        "a few epochs per capacity or weight-decay lever on the flips-only FashionMNIST config"),
    "levers_noise": lever_study_block(
        "levers_noise", "the flips-only config",
        "a few epochs with dithered spikes as noise on the flips-only FashionMNIST config"),
    "levers_depth": lever_study_block(
        "levers_depth", "the flips-only config",
        "a few epochs with a third conv layer on the flips-only FashionMNIST config"),
    "levers_smoothing": lever_study_block(
        "levers_smoothing", "the flips-only config",
        "a few epochs with label smoothing on the flips-only FashionMNIST config"),
    "levers_csnn": lever_study_block(
        "levers_csnn", "the flips-only CSNN config",
        "a few epochs per learning rate or loss of the snnTorch CSNN baseline on FashionMNIST"),
    "levers": Block(block_levers, ("levers",), "one epoch per training-step setting: seconds, steps, accuracy"),
    "eval_hflip": Block(block_eval_hflip, ("eval_hflip", "training"),
                        "test error of trained weights without and with test-time mirror averaging"),
    "step_cost": Block(block_step_cost, ("step_cost",),
                       "a training batch's time per lever on a recipe config, and the epochs a time budget buys"),
    "curvature": Block(block_curvature, ("curvature",), "the coupling's eigenvalue at the end of trained free phases"),
    "curvature_bound": Block(block_curvature_bound, ("curvature_bound",),
                             "the same for the runs trained with the curvature bound"),
    "alignment": Block(block_alignment, ("alignment",),
                       "EP vs BPTT gradient cosines per cell and β, what settled, spikes, argmax flips"),
    "neuromorphic_cost": Block(block_neuromorphic_cost, ("neuromorphic_cost",),
                               "spikes, SynOps, dense MACs, latency and accuracy per inference"),
    "baselines": Block(block_baselines, ("baselines",), "EP, BPTT and snnTorch's CSNN: test error, time, memory"),
}


# ------------------------------------------------------------------------------------------------ the files


def default_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def render_text(text: str, results: Results, where: str = "<text>") -> tuple[str, list[str]]:
    """The text with every generated block rendered anew, and the names of the blocks whose text changed.
    Unknown block names and unpaired markers raise ``RenderError``."""
    opened = [m for m in MARKER.finditer(text) if m["end"] == "BEGIN"]
    blocks = list(BLOCK.finditer(text))
    if len(opened) != len(blocks) or len(MARKER.findall(text)) != 2 * len(blocks):
        raise RenderError(f"{where}: unpaired or nested GENERATED markers")
    changed: list[str] = []
    rendered: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise RenderError(f"{where}: unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if name not in rendered:
            rendered[name] = BLOCKS[name].render(results).strip("\n") + "\n"
        if match["body"] != rendered[name]:
            changed.append(name)
        return f"<!-- BEGIN GENERATED: {name} -->\n{rendered[name]}<!-- END GENERATED: {name} -->"

    return BLOCK.sub(replace, text), changed


def check(files: Iterable[Path], results: Results | None = None) -> list[str]:
    """'file: block' for every block that differs from what the records render now (empty when all agree)."""
    results = results or Results()
    stale = []
    for path in files:
        try:
            _, changed = render_text(path.read_text(), results, str(path))
        except RenderError as error:
            stale.append(f"{path}: {error}")
            continue
        stale += [f"{_relative(path)}: {name}" for name in changed]
    return stale


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/**/*.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the blocks that differ")
    parser.add_argument("--list", action="store_true", help="print the block names, sources and contents")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="the records' directory")
    args = parser.parse_args(argv)
    if args.list:
        for name, block in BLOCKS.items():
            print(f"{name}  [{', '.join(s + '.json' for s in block.sources)}]  {block.holds}")
        return 0
    files = args.files or default_files()
    results = Results(args.results)
    if args.check:
        stale = check(files, results)
        for line in stale:
            print(f"differs from the records: {line}")
        if stale:
            print("run: python benchmarks/render_tables.py", file=sys.stderr)
        return 1 if stale else 0
    for path in files:
        text = path.read_text()
        new, changed = render_text(text, results, str(path))
        if new != text:
            path.write_text(new)
            print(f"{_relative(path)}: rewrote {', '.join(changed)}")
    unused = sorted({p.stem for p in results.directory.glob("*.json")} - results.used)
    if unused:
        print(f"results no block renders: {', '.join(u + '.json' for u in unused)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
