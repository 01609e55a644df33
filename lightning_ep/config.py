"""The settings of ``EPLightningModule``, grouped into typed, documented, frozen dataclasses.

Each group checks its own values when it is built; the defaults are the paper configuration (the spiking 2C2FC
network, Sigma-Delta threshold 0.01, average pooling, hidden 256, T1 30 / T2 10, beta 0.3, the curvature
penalty). LightningCLI exposes every field as a nested flag (``--model.phases.t1 12``), with the meaning below in
``--help``. Checkpoints store each group as a plain dict (``as_plain``), and every group is built back from
one (``coerce``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lightning_ep.dynamics import StartKind, UpdateOrder
from lightning_ep.ep import Estimator
from lightning_ep.network import Conv, ConvergentNetwork, Dense, LossKind, check_label_smoothing
from lightning_ep.pooling import check_pooling

Method = Literal["ep", "bptt"]


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}: use one of {tuple(allowed)}")


@dataclass(frozen=True)
class NetworkConfig:
    """The convergent network: conv layers, then dense layers, then the output (paper: the 2C2FC network).

    Args:
        input_shape: shape of one input sample, (channels, height, width) or (features,); the recipes take it
            from the data module.
        num_classes: number of classes (output neurons with ``loss='mse'``, read-out outputs with ``'ce'``).
        channels: output channels of each conv layer, input side first (one entry per conv layer).
        kernel_size: square kernel size of every conv layer (stride 1).
        padding: zero padding of every conv layer (``(kernel_size - 1) // 2`` keeps the map size).
        pooling: 2x2 pooling after every conv layer: 'avg' (average pooling, its adjoint nearest-neighbour
            upsampling; recommended, and needed by the curvature penalty), 'max' (breaks EP with spikes) or 'none'.
        hidden: widths of the hidden dense layers between the conv layers and the output.
        layers: a per-layer stack of ``Conv`` / ``Dense`` specs instead of ``channels``, ``kernel_size``,
            ``padding``, ``pooling`` and ``hidden`` (which must then stay at their defaults).
        loss: 'mse' (an output layer of neurons nudged towards the one-hot target; the paper's) or 'ce' (a linear
            read-out of the last layer, trained with cross-entropy).
        threshold: Sigma-Delta spike threshold theta (> 0: neurons talk through spikes of this size; 0: a
            non-spiking network that sends its exact states). Paper: 0.01.
        graded: True: a neuron may send several spikes a step (its change rounded to multiples of theta); False:
            at most one spike (of either sign) a step.
        label_smoothing: share of the target spread evenly over all classes, in [0, 1) (0: one-hot targets; the
            paper's); it regularises like in backprop training, and EP nudges towards the smoothed target.
    """

    input_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 5
    padding: int = 0
    pooling: Literal["avg", "max", "none"] = "avg"
    hidden: tuple[int, ...] = (256,)
    layers: tuple[Conv | Dense, ...] | None = None
    loss: LossKind = "mse"
    threshold: float = 0.01
    graded: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "input_shape", tuple(int(d) for d in self.input_shape))
        set_(self, "channels", tuple(int(c) for c in self.channels))
        set_(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.layers is not None:
            if any(getattr(self, f.name) != f.default for f in _SHORTCUT_FIELDS):
                raise ValueError("give either layers (per-layer Conv/Dense specs) or the 2C2FC shortcut "
                                 f"({', '.join(f.name for f in _SHORTCUT_FIELDS)}), not both")
            set_(self, "layers", tuple(_layer_spec(spec) for spec in self.layers))
        _positive_int("num_classes", self.num_classes, 2)
        _positive_int("kernel_size", self.kernel_size)
        _positive_int("padding", self.padding, 0)
        check_pooling(self.pooling)
        _choice("loss", self.loss, ("mse", "ce"))
        if any(c < 1 for c in self.channels) or any(h < 1 for h in self.hidden):
            raise ValueError(f"channels and hidden widths must be >= 1, got {self.channels} and {self.hidden}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold (the Sigma-Delta spike size) must be >= 0, got {self.threshold}")
        check_label_smoothing(self.label_smoothing)

    @property
    def layer_specs(self) -> list[Conv | Dense]:
        """The per-layer stack this configuration builds."""
        if self.layers is not None:
            return list(self.layers)
        convs: list[Conv | Dense] = [Conv(c, self.kernel_size, self.padding, self.pooling) for c in self.channels]
        return convs + [Dense(h) for h in self.hidden]

    def build(self) -> ConvergentNetwork:
        """A new network with freshly initialised weights."""
        return ConvergentNetwork(self.input_shape, self.layer_specs, self.num_classes, self.loss, self.threshold,
                                 self.graded, label_smoothing=self.label_smoothing)

    @classmethod
    def of(cls, net: ConvergentNetwork) -> NetworkConfig:
        """The configuration that builds a network like ``net`` (its layer stack, loss, label smoothing, threshold
        and spikes).

        Args:
            net: the network (a ``ConvergentNetwork``); its weights are not part of the configuration.
        """
        return cls(input_shape=net.input_shape, num_classes=net.num_classes, layers=tuple(net.layer_specs),
                   loss=net.loss_kind, threshold=net.threshold, graded=net.blocks[0].neuron.graded,
                   label_smoothing=net.label_smoothing)


_SHORTCUT_FIELDS = [f for f in dataclasses.fields(NetworkConfig)
                    if f.name in ("channels", "kernel_size", "padding", "pooling", "hidden")]


def _layer_spec(spec: Conv | Dense | Mapping[str, Any]) -> Conv | Dense:
    """A ``Conv`` / ``Dense`` spec, from itself or from its fields (a checkpoint's dict)."""
    if isinstance(spec, Conv | Dense):
        return spec
    if isinstance(spec, Mapping) and "channels" in spec:
        return Conv(**spec)
    if isinstance(spec, Mapping) and "features" in spec:
        return Dense(**spec)
    raise TypeError(f"layers must hold Conv or Dense specs (or their fields as dicts), got {spec!r}")


@dataclass(frozen=True)
class PhasesConfig:
    """How long the phases run and how the state moves in each step.

    Args:
        t1: steps of the free phase in training (paper config: 30).
        t2: steps of each nudged phase (+beta and -beta; paper config: 10).
        eval_t1: free-phase steps for validation, test and prediction (None: ``t1``).
        start: the state every free phase starts from: 'zeros', or 'feedforward' (one feed-forward sweep, a warm
            start that lets fewer steps settle).
        omega: relaxation factor of every update, in (0, 2): 1 is plain block-coordinate descent, above 1
            over-relaxation (faster with a feed-forward start).
        update: 'async' (even layers, then odd ones: exact block-coordinate descent of the energy, recommended)
            or 'sync' (all layers at once, as the EP reference codes).
        dynamics: 'explicit' (the closed-form step, fast) or 'autograd' (the step from autograd of the energy, a
            slow reference that needs ``update='sync'`` and ``omega=1``).
        tol: stop a phase early once no state moves by more than this in a step (None: always run all steps).
    """

    t1: int = 30
    t2: int = 10
    eval_t1: int | None = None
    start: StartKind = "zeros"
    omega: float = 1.0
    update: UpdateOrder = "async"
    dynamics: Literal["explicit", "autograd"] = "explicit"
    tol: float | None = None

    def __post_init__(self) -> None:
        _positive_int("t1 (free-phase steps)", self.t1)
        _positive_int("t2 (nudged-phase steps)", self.t2)
        if self.eval_t1 is not None:
            _positive_int("eval_t1 (free-phase steps in evaluation)", self.eval_t1)
        _choice("start", self.start, ("zeros", "feedforward"))
        _choice("update", self.update, ("async", "sync"))
        _choice("dynamics", self.dynamics, ("explicit", "autograd"))
        if not 0.0 < self.omega < 2.0:
            raise ValueError(f"omega (the relaxation factor) must lie in (0, 2), got {self.omega}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be > 0 or None, got {self.tol}")
        if self.dynamics == "autograd" and (self.update != "sync" or self.omega != 1.0):
            raise ValueError("dynamics='autograd' is the synchronous reference: use update='sync' and omega=1")

    @property
    def evaluation_steps(self) -> int:
        """Free-phase steps in validation, test and prediction."""
        return self.eval_t1 or self.t1


@dataclass(frozen=True)
class EPConfig:
    """The EP estimate: how hard the nudged phases pull, and which phases the estimate compares.

    Args:
        beta: nudging strength beta > 0 (below 1 with the mse output and a -beta phase; paper config: 0.3).
        estimator: 'symmetric' (+beta against -beta, the paper's), 'one_sided' (+beta against the free state) or
            'random_sign' (a random one of the two nudges against the free state).
        dither: dithered Sigma-Delta in training (stochastic rounding of the spike counts, so that what the
            neurons send is unbiased; both nudged phases see the same random stream). Needs spiking, graded
            neurons.
        average_last: evaluate the energy at the states averaged over the last this many steps of each phase
            the estimate uses (0: at the last state), which averages out the remaining spiking fluctuation.
    """

    beta: float = 0.3
    estimator: Estimator = "symmetric"
    dither: bool = False
    average_last: int = 0

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        _choice("estimator", self.estimator, ("symmetric", "one_sided", "random_sign"))
        _positive_int("average_last", self.average_last, 0)


@dataclass(frozen=True)
class BPTTConfig:
    """What ``method='bptt'`` backpropagates (through the same dynamics; ignored by EP).

    Args:
        objective: 'nudged' (EP's own objective: the loss after a nudged phase of strength drawn per sample from
            [-beta, beta], backpropagated through the nudged steps) or 'free' (the loss after the free phase).
        truncate: with ``objective='free'``, backpropagate through only the last this many free steps (None:
            all of them).
    """

    objective: Literal["nudged", "free"] = "nudged"
    truncate: int | None = None

    def __post_init__(self) -> None:
        _choice("bptt objective", self.objective, ("nudged", "free"))
        if self.truncate is not None:
            _positive_int("bptt truncate", self.truncate)
            if self.objective != "free":
                raise ValueError("truncate (the last free steps BPTT goes through) needs objective='free'")


@dataclass(frozen=True)
class CurvatureConfig:
    """A penalty that keeps the free states away from saddles of the energy, so the relaxation stays a fast
    contraction as the weights grow (the paper-config results rest on it; needs average pooling or none).

    Args:
        bound: the largest allowed eigenvalue of the coupling between the active units, > 0 (paper config: 0.9).
        weight: how strongly samples above the bound are penalised, > 0.
        iters: power-iteration rounds that estimate each eigenvalue (from below: too few miss samples above the
            bound; 30 recommended).
        every_n_batches: penalise every this many training batches only, at ``every_n_batches`` times the weight
            (lazy regularisation: the same penalty on average, for less time; 1: every batch).
    """

    bound: float = 0.9
    weight: float = 1.0
    iters: int = 30
    every_n_batches: int = 1

    def __post_init__(self) -> None:
        if not (self.bound > 0 and self.weight > 0):
            raise ValueError(f"curvature bound and weight must be > 0, got {self.bound} and {self.weight}")
        _positive_int("curvature iters (power-iteration rounds)", self.iters)
        _positive_int("curvature every_n_batches", self.every_n_batches)


Config = TypeVar("Config")


def coerce(cls: type[Config], value: Config | Mapping[str, Any] | None, name: str) -> Config:
    """``value`` as a ``cls``: itself, or built from its fields (a dict, as checkpoints store it).

    Args:
        cls: the config dataclass (e.g. ``OptimConfig``).
        value: a ``cls``, or a mapping of some of its fields (the others keep their defaults); an unknown field
            raises a ValueError, any other value (None included) a TypeError.
        name: the argument's name in error messages (e.g. ``'optim'``).
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name}: unknown settings {unknown}; {cls.__name__} has {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{name} must be a {cls.__name__} (or a dict of its fields), got {type(value).__name__}")


def as_plain(value: Any) -> Any:
    """A dataclass (nested) as dicts, lists and scalars only: what a checkpoint loads with ``weights_only``.

    Args:
        value: any value: dataclass instances and mappings become dicts, lists and tuples lists (recursively);
            anything else is returned as is.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    return value
