"""Named configurations of ``EPLightningModule`` (``EPLightningModule.preset(name)``), each a dict of its settings.

- ``paper``: the defaults, the paper configuration our headline results use.
- ``demo``: a feed-forward warm start with over-relaxed steps (T1 12 / T2 8, beta 0.2, no curvature penalty): two
  FashionMNIST epochs train in a few minutes on a 2-core CPU (the recipes' default config).
"""

from __future__ import annotations

from typing import Any

from lightning_ep.config import EPConfig, PhasesConfig

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "demo": {
        "phases": PhasesConfig(t1=12, t2=8, start="feedforward", omega=1.3),
        "ep": EPConfig(beta=0.2),
        "curvature": None,
    },
}
"""The presets by name: each maps ``EPLightningModule`` argument names to their values (missing groups keep their
defaults). ``'paper'`` is empty (the defaults); ``'demo'`` is the CPU demo setting."""
