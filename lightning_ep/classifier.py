"""``ImageClassifier``: what ``EPLightningModule`` and the snnTorch baseline share as Lightning modules.

Accuracy metrics per stage, the validation / test / prediction steps, the optimizer and scheduler from an
``OptimConfig``, and the callbacks every run needs. A subclass supplies
``evaluate`` (logits and loss of a batch, without autograd) and ``param_groups``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ep.data.sampler import MidEpochResume
from lightning_ep.distributed import DestroyProcessGroupAtExit
from lightning_ep.inputs import prepare_images, unpack_batch
from lightning_ep.optimization import OptimConfig

PredictOutput = Literal["class", "logits", "probabilities"]
PREDICT_OUTPUTS = ("class", "logits", "probabilities")


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool; a TypeError naming the argument otherwise (``"no"`` would read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def with_mirrors(x: Tensor) -> Tensor:
    """The images ``x`` followed by their left-right mirrors (the last, width axis reversed): ``(2B, ...)``.

    Args:
        x: a batch of images ``(B, C, H, W)`` (any dtype).
    """
    if x.dim() != 4:
        raise ValueError(f"eval_hflip mirrors images along their width: it needs (B, C, H, W) images, got shape "
                         f"{tuple(x.shape)}; reshape the inputs or set eval_hflip=False")
    return torch.cat([x, x.flip(-1)])


def mean_over_mirrors(outputs: Tensor) -> Tensor:
    """Each image's outputs averaged with its mirror's, from the outputs of ``with_mirrors(x)``: ``(B, ...)``.

    Args:
        outputs: the outputs of ``with_mirrors(x)``, ``(2B, ...)``: the images' first, then their mirrors'.
    """
    if len(outputs) % 2:
        raise ValueError(f"outputs of with_mirrors(x) come in pairs: got an odd batch of {len(outputs)}")
    half = len(outputs) // 2
    return (outputs[:half] + outputs[half:]) / 2


class ImageClassifier(LightningModule):
    """A LightningModule that classifies images; see the module docstring.

    ``predict_output`` sets what ``Trainer.predict`` returns per batch: 'class' (class indices, the default),
    'logits' (the network's outputs) or 'probabilities' (their softmax). With ``eval_hflip`` (a subclass's
    argument), validation, test and prediction average each image's outputs with its left-right mirror's.
    """

    optim: OptimConfig
    predict_output: PredictOutput = "class"
    eval_hflip: bool = False

    def _init_metrics(self, num_classes: int) -> None:
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    # -- what a subclass supplies ---------------------------------------------------------------------------
    def evaluate(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        """Logits and mean loss of a batch of prepared images (no autograd needed); may log more under ``stage``.

        Args:
            x: the prepared images (``images``), ``(B, *input_shape)``, floats of the parameters' dtype.
            y: the labels, ``(B,)`` integer class indices in ``[0, num_classes)``.
            stage: ``'val'`` or ``'test'``: the prefix of what it logs (e.g. ``'val/...'``).
        """
        raise NotImplementedError

    def param_groups(self) -> list[list[nn.Parameter]]:
        """The parameters by block, input side first (one learning rate each with ``layer_lrs``)."""
        return [list(self.parameters())]

    # -- batches --------------------------------------------------------------------------------------------
    def images(self, x: Any) -> Tensor:
        """``x`` as float images of the parameters' dtype (see ``lightning_ep.inputs``).

        Args:
            x: a tensor of images: ``uint8`` pixels (0..255) or floats of unit scale ([0, 1] or standardised).
        """
        return prepare_images(x, next(self.parameters()).dtype)

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        """A training/evaluation batch (tuple, list or dict) as prepared ``(images, labels)``.

        Args:
            batch: a tuple or list ``(images, labels, ...)``, or a dict with an image and a label key (see
                ``lightning_ep.inputs.IMAGE_KEYS`` / ``LABEL_KEYS``).
        """
        x, y = unpack_batch(batch)
        return self.images(x), y  # type: ignore[return-value]

    # -- evaluation and prediction --------------------------------------------------------------------------
    def _evaluate_batch(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = self.unpack(batch)
        with torch.no_grad():
            if self.eval_hflip:  # one pass over the images and their mirrors; the loss is the mean over both
                logits, loss = self.evaluate(with_mirrors(x), torch.cat([y, y]), stage)
                logits = mean_over_mirrors(logits)
            else:
                logits, loss = self.evaluate(x, y, stage)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate_batch(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate_batch(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Per ``predict_output``: class indices, logits or probabilities of the batch's images (labels, if any,
        are ignored)."""
        if self.predict_output not in PREDICT_OUTPUTS:
            raise ValueError(f"unknown predict_output {self.predict_output!r}: use one of {PREDICT_OUTPUTS}")
        x, _ = unpack_batch(batch, labels_required=False)
        with torch.no_grad():
            logits = mean_over_mirrors(self(with_mirrors(x))) if self.eval_hflip else self(x)
        if self.predict_output == "logits":
            return logits
        if self.predict_output == "probabilities":
            return logits.float().softmax(1)
        return logits.argmax(1)

    # -- optimisation and callbacks -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        monitor = "val/loss" if self.automatic_optimization else None
        return self.optim.lightning_config(self.param_groups(), self.trainer, monitor)

    def configure_callbacks(self) -> list[Any]:
        """``MidEpochResume`` (a run cut mid-epoch resumes at its next batch) and ``DestroyProcessGroupAtExit``, each
        unless the trainer has one already (so a validate/test after fit does not warn of an override)."""
        present = {type(c) for c in self.trainer.callbacks}
        return [c for c in (MidEpochResume(), DestroyProcessGroupAtExit()) if type(c) not in present]
