"""Latency: the first step after which the prediction no longer changes, and the accuracy of inference cut after a
number of steps, from the per-step predictions of a ``StepTrace``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_ep.neuromorphic.trace import StepTrace


def _check_predictions(predictions: Tensor) -> None:
    """Raise a ValueError unless ``predictions`` is ``(steps >= 1, batch)``."""
    if predictions.dim() != 2 or predictions.shape[0] < 1:
        raise ValueError(f"predictions must be (steps >= 1, batch), got shape {tuple(predictions.shape)}")


def latency_steps(predictions: Tensor) -> Tensor:
    """Per sample (column of a (steps, batch) tensor of predictions), the first step (1-based) from which the
    prediction equals the last one at every later step: 1 if it never changed, ``steps`` if it changed last step.

    Args:
        predictions: the predicted class of each sample after each step, shape ``(steps, batch)`` with
            ``steps >= 1`` (e.g. ``StepTrace.predictions_per_step()``).

    Returns:
        Per sample, the latency in steps (int64, in [1, steps]).

    Raises:
        ValueError: ``predictions`` not of shape ``(steps >= 1, batch)``.
    """
    _check_predictions(predictions)
    changed = predictions != predictions[-1]
    step = torch.arange(1, predictions.shape[0] + 1, device=predictions.device)[:, None]
    return (changed * step).amax(0) + 1


def accuracy_at_steps(trace: StepTrace, y: Tensor, steps: Sequence[int]) -> dict[int, float]:
    """Accuracy if inference were cut after each of ``steps`` (a phase that stopped earlier keeps its answer).

    Args:
        trace: the ``StepTrace`` of the phase (at least one step recorded, else a ValueError).
        y: the batch's labels, ``(B,)`` class indices on the trace's device.
        steps: the step counts to cut at (integers >= 1; beyond the steps recorded: the last step).
    """
    predictions = trace.predictions_per_step()
    if predictions.shape[0] < 1:
        raise ValueError("the trace holds no step")
    return accuracy_if_cut(predictions, y, steps)


def accuracy_if_cut(predictions: Tensor, y: Tensor, steps: Sequence[int]) -> dict[int, float]:
    """Accuracy of the predictions after each of ``steps`` (beyond the steps recorded: the last step's answer).

    Args:
        predictions: the predicted class of each sample after each step, shape ``(steps >= 1, batch)`` (e.g.
            ``StepTrace.predictions_per_step()``).
        y: the batch's labels, ``(B,)`` class indices on the predictions' device.
        steps: the step counts to cut at (integers >= 1, else a ValueError).

    Raises:
        ValueError: ``predictions`` not of shape ``(steps >= 1, batch)``, or a step count below 1.
    """
    _check_predictions(predictions)
    bad = [t for t in steps if isinstance(t, bool) or not isinstance(t, int) or t < 1]
    if bad:
        raise ValueError(f"steps to cut at must be integers >= 1 (step 1 is the first step), got {bad}")
    return {t: float((predictions[min(t, predictions.shape[0]) - 1] == y).double().mean()) for t in steps}
