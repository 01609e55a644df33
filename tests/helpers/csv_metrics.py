"""Read back what a CSVLogger wrote."""

from __future__ import annotations

import csv
from pathlib import Path


def read_csv_metrics(log_dir: str | Path) -> dict[int, dict[str, float]]:
    """metrics.csv of a CSVLogger as {step: {key: value}} (empty cells dropped)."""
    by_step: dict[int, dict[str, float]] = {}
    with (Path(log_dir) / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            by_step.setdefault(int(row.pop("step")), {}).update({k: float(v) for k, v in row.items() if v != ""})
    return by_step
