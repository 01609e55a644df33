"""The random streams of a training run: explicit, seeded generators whose states travel in checkpoints.

``TrainingStreams.main`` draws the random-sign estimator's signs (EP) and the nudge strengths (nudged BPTT);
``TrainingStreams.dither(device)`` draws dithered Sigma-Delta's rounding on the device the module runs on.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor


class TrainingStreams:
    """Seeded generators, created on first use.

    Args:
        seed: seed of every generator.
        dither: whether the run dithers (otherwise ``dither()`` is ``None``).
    """

    def __init__(self, seed: int, dither: bool) -> None:
        self.seed = seed
        self.dithers = dither
        self._main: torch.Generator | None = None
        self._dither: torch.Generator | None = None  # the dither generator last used (on its device)
        self._dither_states: dict[str, Tensor] = {}  # kept states by device type: a checkpoint's, or a left device's

    @property
    def main(self) -> torch.Generator:
        """The CPU generator of the random-sign estimator and of the nudge strengths."""
        if self._main is None:
            self._main = torch.Generator().manual_seed(self.seed)
        return self._main

    def dither(self, device: torch.device) -> torch.Generator | None:
        """The dither generator on ``device`` (``None`` without dithering). Its state is kept when the module moves
        to another device and back (Lightning moves it to the CPU after a GPU fit); a generator cannot move across
        device types, so a state saved on another type (a CUDA checkpoint resumed on the CPU) is not continued:
        reseeded, with a warning."""
        if not self.dithers:
            return None
        if self._dither is not None and self._dither.device == device:
            return self._dither
        if self._dither is not None:
            self._dither_states[self._dither.device.type] = self._dither.get_state()
        generator = torch.Generator(device).manual_seed(self.seed)
        state = self._dither_states.pop(device.type, None)
        if state is not None:
            generator.set_state(state)
        elif self._dither_states:
            warnings.warn(f"the dither generator's state was saved on {sorted(self._dither_states)}, not on "
                          f"{device.type}: the generator is reseeded with seed={self.seed}", stacklevel=3)
        self._dither = generator
        return generator

    def state_dict(self, device: torch.device) -> dict[str, Any]:
        """The generators' states, for a checkpoint."""
        state: dict[str, Any] = {"ep_generator_state": self.main.get_state()}
        if self.dithers:
            # the generator last used (after a GPU fit the module is back on the CPU, its generator still CUDA's)
            generator = self._dither or self.dither(device)
            assert generator is not None
            state["dither_generator_state"] = generator.get_state()
            state["dither_generator_device"] = generator.device.type
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the streams of a checkpoint (generator states are CPU byte tensors, wherever the checkpoint was
        mapped)."""
        if "ep_generator_state" in state:
            self.main.set_state(state["ep_generator_state"].cpu())
        if "dither_generator_state" in state:
            device = state.get("dither_generator_device", "cpu")
            self._dither, self._dither_states = None, {device: state["dither_generator_state"].cpu()}

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not pickle through torch.multiprocessing (ddp_spawn): send the states instead.
        states = dict(self._dither_states)
        if self._dither is not None:
            states[self._dither.device.type] = self._dither.get_state()
        main = self._main.get_state() if self._main is not None else None
        return {"seed": self.seed, "dithers": self.dithers, "main": main, "dither_states": states}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["seed"], state["dithers"])  # type: ignore[misc]
        self._dither_states = state["dither_states"]
        if state["main"] is not None:
            self.main.set_state(state["main"])
