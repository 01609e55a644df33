"""Shared helpers of the benchmark scripts: thread setup, a hardware string, real data batches, the training
objective of a plain loop, table printing and JSON output (a list of flat records in
``benchmarks/results/NAME.json``; ``--quick`` runs write to ``benchmarks/results/quick/``)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows has no fcntl: records are appended there without a lock
    fcntl = None  # type: ignore[assignment]

from lightning_ep.data import DataNotFoundError, load_split
from lightning_ep.ep import EPResult
from lightning_ep.network import ConvergentNetwork
from lightning_ep.stability import CURVATURE_SAMPLES, curvature_penalty

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DIR = RESULTS_DIR / "quick"  # --quick runs write here (git-ignored), never over the full results

Record = dict[str, Any]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--threads`` and ``--out`` (the JSON file), shared by every benchmark."""
    parser.add_argument("--quick", action="store_true", help="small settings that finish in under 2 minutes")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/, with --quick benchmarks/results/quick/)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory with the FashionMNIST IDX files (default: the package's offline sources)")


def setup_threads(threads: int) -> None:
    """Pin torch's intra-op (and inter-op) thread counts."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set: it can only be set once per process
        torch.set_num_interop_threads(threads)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else platform.processor(), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """One line naming the CPU, the core count, the torch version and its thread count (and the GPU, where one is
    visible to torch)."""
    gpu = f" | GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu_name()} | {os.cpu_count()} cpus | torch {torch.__version__} | {torch.get_num_threads()} threads "
            f"| {platform.system()} {platform.release()}{gpu}")


def load_averages() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages (other processes sharing the cores slow every timing); None where the
    platform has none."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):  # AttributeError: no os.getloadavg on this platform
        return None


def load_average() -> str:
    """``load_averages`` as text: '1.02 0.98 0.95', or 'n/a'."""
    values = load_averages()
    return "n/a" if values is None else " ".join(f"{v:.2f}" for v in values)


def command() -> str:
    """The command line that runs this process, shell-quoted."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def stamp(records: Sequence[Record], **extra: Any) -> list[Record]:
    """Add ``hardware`` and ``command`` (plus ``extra``, e.g. the load averages) to every record."""
    common = {"hardware": hardware(), "command": command(), **extra}
    return [{**r, **common} for r in records]


def training_objective(net: ConvergentNetwork, ep: EPResult, curvature_bound: float | None) -> torch.Tensor:
    """What a plain training loop backpropagates: the EP surrogate, plus (with a bound) the curvature penalty as
    ``EPLightningModule(curvature=CurvatureConfig(bound=...))`` adds it (weight 1, its default rounds, on the first
    ``CURVATURE_SAMPLES`` free states of the batch)."""
    if curvature_bound is None:
        return ep.surrogate
    states = [t[:CURVATURE_SAMPLES] for t in ep.phases["free"].state.s]
    return ep.surrogate + curvature_penalty(net, states, curvature_bound)[0]


def write_json(name: str, records: Sequence[Record], out: Path | None = None, quick: bool = False) -> Path:
    """Write ``records`` (flat dicts) as a JSON list to ``out``, else ``benchmarks/results/NAME.json`` (a full run)
    or ``benchmarks/results/quick/NAME.json`` (a ``--quick`` run, which never overwrites the full results)."""
    path = out if out is not None else (QUICK_DIR if quick else RESULTS_DIR) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=1, default=_jsonable) + "\n")
    print(f"wrote {len(records)} records to {path}")
    return path


def append_record(path: Path, record: Record) -> None:
    """Append ``record`` to the JSON list in ``path`` (created when missing), holding an exclusive lock on the file
    where the platform has one: runs beside each other that share a results file (a lever study's) keep every
    record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        text = f.read()
        records = json.loads(text) if text.strip() else []
        records.append(record)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(records, indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers in a compact form for tables: floats with ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value != 0.0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(
    records: Sequence[Record],
    columns: Sequence[str],
    title: str | None = None,
    fmt: Callable[[Any], str] = format_value,
) -> None:
    """Print ``columns`` of ``records`` as an aligned text table (missing keys print as '-')."""
    rows = [[fmt(r.get(c)) for c in columns] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


@functools.lru_cache(maxsize=4)
def _load_split(train: bool, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split("fashion_mnist", train, data_dir)


def load_batch(
    n: int,
    offset: int = 0,
    split: str = "train",
    data_dir: Path | str | None = None,
    dtype: torch.dtype = torch.float32,
    allow_synthetic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` FashionMNIST images (in [0, 1], shape (n, 1, 28, 28)) and labels of ``split``, starting at ``offset``;
    returns ``(x, y, source)``. The data come from ``lightning_ep.data.load_split`` (``data_dir``, then the offline
    sources; its error lists every option). With ``allow_synthetic`` a missing dataset gives uniform noise and
    random labels instead (for timing and memory, where the values do not matter)."""
    try:
        xs, ys = _load_split(split == "train", None if data_dir is None else str(data_dir))
    except DataNotFoundError:
        if not allow_synthetic:
            raise
        g = torch.Generator().manual_seed(offset)
        x = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype)
        return x, torch.randint(0, 10, (n,), generator=g), "synthetic uniform noise"
    if offset + n > len(xs):
        raise ValueError(f"asked for samples {offset}..{offset + n} of the {split} split, which holds {len(xs)}")
    # Copies, not views: a view keeps the whole split's storage, which memory counts by storage would include.
    x, y = xs[offset : offset + n].to(dtype, copy=True), ys[offset : offset + n].clone()
    return x, y, f"fashion_mnist/{split}[{offset}:{offset + n}]"
