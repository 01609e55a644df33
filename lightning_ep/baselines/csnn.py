"""``SnnTorchCSNN``: snnTorch's standard convolutional SNN (tutorial 7) trained by BPTT through time, as a
LightningModule with ``EPLightningModule``'s metrics, evaluation steps and optimisation settings (an ``OptimConfig``).

Network: ``conv -> pooling -> snn.Leaky`` for each of ``channels``, then ``dense -> snn.Leaky`` for each of
``hidden`` and for the ``num_classes`` outputs. The static image is presented at every one of ``num_steps`` time
steps (its conv drive is the same at every step, so it is computed once); the loss is snnTorch's
``functional.ce_rate_loss`` (tutorial 7: cross-entropy of the output spikes at every step, averaged over the
steps) or ``mse_count_loss``; the prediction is the class with the most output spikes (``accuracy_rate``).

The neuron state is explicit: every ``snn.Leaky`` runs with ``init_hidden=False`` and its membrane is carried by
``SnnTorchCSNN.simulate`` from a zero tensor for each batch, never through snnTorch's instance registry or
``utils.reset``. (``snn.Leaky`` keeps a copy of the last membrane in its ``mem`` buffer even so; ``simulate`` empties
it afterwards, so no batch or autograd graph outlives the call.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import functional as SF
from snntorch import surrogate as snn_surrogate
from torch import Tensor, nn

from lightning_ep.classifier import ImageClassifier, check_flag
from lightning_ep.config import as_plain, coerce
from lightning_ep.network import check_batch
from lightning_ep.optimization import OptimConfig
from lightning_ep.pooling import check_pooling, pooled_hw

SurrogateName = Literal["fast_sigmoid", "sigmoid", "atan", "straight_through"]
CSNNLoss = Literal["ce_rate", "mse_count"]
# snnTorch's surrogate factories and the name of their one parameter (None: it takes none)
SURROGATES: dict[str, tuple[Callable[..., Callable[[Tensor], Tensor]], str | None]] = {
    "fast_sigmoid": (snn_surrogate.fast_sigmoid, "slope"),
    "sigmoid": (snn_surrogate.sigmoid, "slope"),
    "atan": (snn_surrogate.atan, "alpha"),
    "straight_through": (snn_surrogate.straight_through_estimator, None),
}
"""snnTorch's surrogate gradients by name: the factory and the name of its one parameter (None: it takes none)."""
LOSSES: tuple[str, ...] = ("ce_rate", "mse_count")
"""The baseline's losses: cross-entropy of the spike rates, or MSE of the spike counts against target rates."""
POOL_SIZE = 2  # as EPLightningModule's conv layers (and snnTorch's tutorial)
"""The side of the baseline's pooling window (average or max) after each conv layer, in pixels."""
MSE_COUNT_RATES = (0.8, 0.2)  # mse_count_loss targets: the correct class fires 80 % of the steps, the others 20 %
"""The ``mse_count`` loss's target firing rates (fraction of steps) of the correct class and of the others."""


class SnnTorchSurrogate:
    """snnTorch's surrogate spike function ``snntorch.surrogate.<name>(<slope>)`` (``slope=None``: snnTorch's
    default), picklable: snnTorch returns a closure, which checkpoints and ``ddp_spawn`` could not pickle.

    Args:
        name: the name of a function of ``snntorch.surrogate`` (one of ``SURROGATES``).
        slope: its steepness parameter (None: snnTorch's default; refused for surrogates without one).
    """

    def __init__(self, name: str, slope: float | None = None) -> None:
        if name not in SURROGATES:
            raise ValueError(f"unknown surrogate {name!r}: use one of {tuple(SURROGATES)}")
        factory, parameter = SURROGATES[name]
        if slope is not None and parameter is None:
            raise ValueError(f"surrogate {name!r} takes no slope: leave surrogate_slope unset (None)")
        if slope is not None and slope <= 0:
            raise ValueError(f"surrogate_slope must be > 0 or None, got {slope}")
        self.name, self.slope = name, slope
        self._spike = factory(**({parameter: slope} if slope is not None and parameter else {}))

    def __call__(self, membrane_minus_threshold: Tensor) -> Tensor:
        return self._spike(membrane_minus_threshold)

    def __reduce__(self) -> tuple[type, tuple[str, float | None]]:
        return SnnTorchSurrogate, (self.name, self.slope)

    def __repr__(self) -> str:
        return f"SnnTorchSurrogate({self.name!r}, slope={self.slope})"


@dataclass
class CSNNRun:
    """One presentation of a batch for ``num_steps`` steps.

    Args:
        output_spikes: the output layer's spikes at every step, (T, B, C).
        output_membrane: the output layer's membrane at every step, (T, B, C).
        layer_neurons: the neurons of each spiking layer per sample (input side first).
        neuron_spikes: each layer's spikes per neuron and sample summed over the steps, (B, *layer shape), detached.
    """

    output_spikes: Tensor
    output_membrane: Tensor
    layer_neurons: list[int]
    neuron_spikes: list[Tensor]

    @property
    def layer_spikes(self) -> list[Tensor]:
        """Every spiking layer's total spike count over the batch and the steps (detached scalars)."""
        return [n.sum() for n in self.neuron_spikes]

    @property
    def spike_counts(self) -> Tensor:
        """Output spikes per class summed over the steps, (B, C): ``argmax(1)`` predicts."""
        return self.output_spikes.sum(0)

    def spike_rates(self) -> list[Tensor]:
        """Spikes per neuron per time step of each layer."""
        steps, batch = self.output_spikes.shape[:2]
        return [count / (batch * steps * neurons) for count, neurons in zip(self.layer_spikes, self.layer_neurons,
                                                                          strict=True)]


def conv_output_shapes(
    input_shape: Sequence[int], channels: Sequence[int], kernel_size: int, padding: int, pooling: str
) -> list[tuple[int, int, int]]:
    """The (C, H, W) of each conv layer after pooling; a ValueError when a layer does not fit its input.

    Args:
        input_shape: (channels, height, width) of one input image.
        channels: output channels of each conv layer, input side first.
        kernel_size: square kernel size of every conv layer (stride 1).
        padding: zero padding of every conv layer.
        pooling: the 2x2 pooling after each conv layer ('avg', 'max' or 'none').
    """
    c, h, w = input_shape
    shapes = []
    for i, out_channels in enumerate(channels):
        h, w = h + 2 * padding - kernel_size + 1, w + 2 * padding - kernel_size + 1
        if h < 1 or w < 1:
            raise ValueError(f"conv layer {i + 1}: kernel_size {kernel_size} with padding {padding} does not fit its "
                             f"{c}x{h - 2 * padding + kernel_size - 1}x{w - 2 * padding + kernel_size - 1} input "
                             "(use a smaller kernel_size, more padding or fewer conv layers)")
        h, w = pooled_hw((h, w), pooling, POOL_SIZE)  # type: ignore[arg-type]
        if h < 1 or w < 1:
            raise ValueError(f"conv layer {i + 1}: {pooling} pooling {POOL_SIZE}x{POOL_SIZE} does not fit its conv "
                             "output (use padding, a smaller kernel_size or fewer conv layers)")
        c = out_channels
        shapes.append((c, h, w))
    return shapes


class SnnTorchCSNN(ImageClassifier):
    """snnTorch's convolutional SNN (``snn.Leaky`` neurons) trained by BPTT through ``num_steps`` time steps.

    Automatic optimization: ``Trainer(gradient_clip_val=..., accumulate_grad_batches=...)`` apply as usual. Logged:
    ``train|val|test/loss``, ``…/acc`` (the class with the most output spikes) and ``…/spike_rate_layer<i>`` (spikes
    per neuron per time step, input side first, the output layer last).

    Args:
        input_shape: (channels, height, width) of one image; the recipes take it from the data module.
        num_classes: number of classes (output neurons).
        channels: output channels of each conv layer (each followed by pooling and a ``snn.Leaky`` layer).
        kernel_size: square kernel size of every conv layer.
        padding: zero padding of every conv layer.
        pooling: 2x2 pooling after every conv layer: 'avg', 'max' or 'none'.
        hidden: widths of the hidden dense ``snn.Leaky`` layers.
        num_steps: time steps the (static) image is presented for.
        beta: membrane decay per step, in [0, 1].
        threshold: firing threshold of every neuron, > 0 (reset by subtraction).
        surrogate: snnTorch's surrogate spike gradient: 'fast_sigmoid', 'sigmoid', 'atan' or 'straight_through'.
        surrogate_slope: the surrogate's slope (alpha for 'atan'; None: snnTorch's default).
        loss: 'ce_rate' (snnTorch tutorial 7's cross-entropy of the output spikes at every step) or 'mse_count'
            (80 % / 20 % of the steps for the correct / other classes).
        optim: optimizer, learning rate and schedule (an OptimConfig, as ``EPLightningModule``'s; gradient
            clipping and accumulation go to the Trainer instead).
        eval_hflip: validation, test and prediction average each image's output spike counts with its left-right
            mirror's (test-time augmentation, as ``EPLightningModule``'s; twice the cost).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 5,
        padding: int = 0,
        pooling: Literal["avg", "max", "none"] = "avg",
        hidden: Sequence[int] = (512,),
        num_steps: int = 25,
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: SurrogateName = "fast_sigmoid",
        surrogate_slope: float | None = None,
        loss: CSNNLoss = "ce_rate",
        optim: OptimConfig = OptimConfig(),
        eval_hflip: bool = False,
    ) -> None:
        super().__init__()
        self.optim = coerce(OptimConfig, optim, "optim")
        self.eval_hflip = check_flag("eval_hflip", eval_hflip)
        if self.optim.gradient_clip_val is not None or self.optim.accumulate_grad_batches != 1:
            raise ValueError("SnnTorchCSNN trains under automatic optimization: pass gradient_clip_val and "
                             "accumulate_grad_batches to the Trainer, not to its OptimConfig")
        self.save_hyperparameters(ignore=["optim"])  # then with optim as plain values (weights-only checkpoints)
        self.save_hyperparameters({**self.hparams, "optim": as_plain(self.optim)})
        self.input_shape = tuple(int(v) for v in input_shape)
        self._check_arguments(num_classes, channels, kernel_size, padding, hidden, num_steps, beta, threshold, loss)
        check_pooling(pooling)
        spike = SnnTorchSurrogate(surrogate, surrogate_slope)
        conv_shapes = conv_output_shapes(self.input_shape, channels, kernel_size, padding, pooling)
        in_channels = [self.input_shape[0], *channels][: len(channels)]
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, kernel_size, padding=padding)
                                   for c_in, c_out in zip(in_channels, channels, strict=True))
        flat = torch.Size(conv_shapes[-1] if conv_shapes else self.input_shape).numel()
        widths = [*hidden, num_classes]
        self.dense = nn.ModuleList(nn.Linear(f_in, f_out) for f_in, f_out in zip([flat, *widths[:-1]], widths,
                                                                                  strict=True))
        self.neurons = nn.ModuleList(snn.Leaky(beta=beta, threshold=threshold, spike_grad=spike, init_hidden=False)
                                     for _ in range(len(self.convs) + len(self.dense)))
        self.layer_neurons = [torch.Size(s).numel() for s in conv_shapes] + widths
        if loss == "ce_rate":
            self.loss_fn: Callable[[Tensor, Tensor], Tensor] = SF.ce_rate_loss()
        else:
            self.loss_fn = SF.mse_count_loss(correct_rate=MSE_COUNT_RATES[0], incorrect_rate=MSE_COUNT_RATES[1])
        self._init_metrics(num_classes)

    def _check_arguments(
        self, num_classes: int, channels: Sequence[int], kernel_size: int, padding: int, hidden: Sequence[int],
        num_steps: int, beta: float, threshold: float, loss: str,
    ) -> None:
        """Raise a ValueError naming the first bad network or training argument."""
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width) of positive sizes, got {self.input_shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if any(c < 1 for c in channels) or any(h < 1 for h in hidden):
            raise ValueError(f"channels and hidden widths must be >= 1, got channels={list(channels)}, "
                             f"hidden={list(hidden)}")
        if kernel_size < 1 or padding < 0:
            raise ValueError(f"kernel_size must be >= 1 and padding >= 0, got {kernel_size} and {padding}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 (time steps the image is presented for), got {num_steps}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta is the membrane decay per step and must lie in [0, 1], got {beta}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")

    # -- the network ----------------------------------------------------------------------------------------
    def _current(self, layer: int, inputs: Tensor) -> Tensor:
        """The input current of spiking layer ``layer`` (0-based) from the layer below's spikes (or the image)."""
        if layer < len(self.convs):
            drive = self.convs[layer](inputs)
            if self.hparams.pooling == "avg":
                return F.avg_pool2d(drive, POOL_SIZE)
            if self.hparams.pooling == "max":
                return F.max_pool2d(drive, POOL_SIZE)
            return drive
        return self.dense[layer - len(self.convs)](inputs.flatten(1))

    def simulate(self, x: Tensor, steps: int | None = None) -> CSNNRun:
        """Present ``x`` for ``num_steps`` steps (or ``steps``: the same run cut earlier) from zero membranes
        (autograd follows the caller's mode).

        Args:
            x: the input batch, ``(B, *input_shape)``, float images of the parameters' dtype (prepared, e.g. by
                ``images``: scaled to [0, 1]).
            steps: time steps to present it for (integer >= 1), or None (default) for ``num_steps``.
        """
        check_batch(x, None, self.input_shape, self.hparams.num_classes)
        image_current = self._current(0, x)  # the image is static: its current is the same at every step
        membranes: list[Tensor | None] = [None] * len(self.neurons)
        neuron_spikes: list[Tensor] = [x.new_zeros(()) for _ in self.neurons]
        output_spikes, output_membrane = [], []
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1 or None (num_steps), got {steps}")
        for _ in range(self.hparams.num_steps if steps is None else steps):
            spikes = x
            for layer, neuron in enumerate(self.neurons):
                current = image_current if layer == 0 else self._current(layer, spikes)
                membrane = membranes[layer]
                if membrane is None:
                    membrane = torch.zeros_like(current)
                spikes, membranes[layer] = neuron(current, membrane)
                neuron_spikes[layer] = neuron_spikes[layer] + spikes.detach()
            output_spikes.append(spikes)
            output_membrane.append(membranes[-1])
        for neuron in self.neurons:  # snn.Leaky keeps the last membrane (and its graph): drop it
            neuron.mem = x.new_zeros(0)
        return CSNNRun(torch.stack(output_spikes), torch.stack(output_membrane), list(self.layer_neurons),
                       neuron_spikes)

    def forward(self, x: Tensor) -> Tensor:
        """Output spike counts per class (B, C) over the ``num_steps`` steps: ``argmax(1)`` predicts; uint8 or
        [0, 1] images."""
        return self.simulate(self.images(x)).spike_counts

    def loss(self, run: CSNNRun, y: Tensor) -> Tensor:
        """The batch's mean loss (``ce_rate`` / ``mse_count``) on the output spikes.

        Args:
            run: the batch's presentation, as ``simulate`` returns it.
            y: the batch's labels, ``(B,)`` class indices in ``[0, num_classes)`` of any integer dtype.
        """
        return self.loss_fn(run.output_spikes, y.long()).reshape(())

    # -- training and evaluation ----------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.unpack(batch)
        check_batch(x, y, self.input_shape, self.hparams.num_classes)
        run = self.simulate(x)
        loss = self.loss(run, y)
        self.train_acc(run.spike_counts.detach(), y)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=len(y))
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self._log_spike_rates("train", run, len(y))
        return loss

    def evaluate(self, x: Tensor, y: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        check_batch(x, y, self.input_shape, self.hparams.num_classes)
        run = self.simulate(x)
        self._log_spike_rates(stage, run, len(y))
        return run.spike_counts, self.loss(run, y)

    def _log_spike_rates(self, stage: str, run: CSNNRun, batch: int) -> None:
        on_step = stage == "train"
        for i, rate in enumerate(run.spike_rates()):
            self.log(f"{stage}/spike_rate_layer{i + 1}", rate, on_step=on_step, on_epoch=True, sync_dist=True,
                     batch_size=batch)
