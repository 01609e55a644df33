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


class ImageClassifier(LightningModule):
    """A LightningModule that classifies images; see the module docstring.

    ``predict_output`` sets what ``Trainer.predict`` returns per batch: 'class' (class indices, the default),
    'logits' (the network's outputs) or 'probabilities' (their softmax).
    """

    optim: OptimConfig
    predict_output: PredictOutput = "class"

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
            logits = self(x)
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
