"""The shape every probe has: hooks into a training step, no-ops unless a probe needs them, and what they see.

A training loop (a server job's, or a user's own through the tracker) calls the hooks of a ProbeSet in this
order each step s: `before_step(s)` with the weights before update s, `capture(s)` around the forward pass,
`after_forward(batch)` with the step's per-example losses, `after_backward(batch)` with the gradient in `.grad`,
`after_step(batch)` once the optimizer has stepped; and `finish(total)` after the last update, where `end`
probes run. A probe never changes the model, its gradients or the random state.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from dynascope.results import Document

LossFn = Callable[[Tensor, Tensor], Tensor]


class Recorder(Protocol):
    """Where a run's numbers go: the database (server jobs), the tracker's sender, or a list in a test."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def progress(self, step: int, total: int, stage: str) -> None: ...
    def should_stop(self) -> bool: ...
    def save_tensors(self, kind: str, step: int, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None: ...
    def result(self, kind: str, step: int, payload: dict[str, Any]) -> None: ...


class ProbeStopped(Exception):
    """The run was cancelled (or taken away) in the middle of a probe."""


T = TypeVar("T")


class Blackboard:
    """What probes tell each other, one typed reading per kind (the latest): a probe publishes a dataclass, another
    reads it by its type — never through each other's attributes."""

    def __init__(self) -> None:
        self._latest: dict[type, Any] = {}

    def publish(self, reading: object) -> None:
        self._latest[type(reading)] = reading

    def latest(self, kind: type[T]) -> T | None:
        return self._latest.get(kind)


@dataclass
class Run:
    """What probes see of the run: the model, its losses, the training data and the optimizer's facts."""

    model: nn.Module
    loss_fn: LossFn  # the mean loss over a batch
    example_loss: LossFn  # each example's loss, whose mean is loss_fn
    x_train: Tensor
    y_train: Tensor
    n_classes: int | None
    seed: int
    total: int  # the number of updates
    threshold: Callable[[], tuple[float, str]]  # the stability threshold now, and its rule
    preconditioner: Callable[[], Tensor | None] = lambda: None  # Adam's diagonal P now (None for SGD, or before Adam's 1st step)
    adaptive: bool = False  # Adam: the threshold applies to λmax(P⁻¹H), not λmax(H)
    full_batch: bool = False  # every batch is the whole training set (in some order)
    vocab: str | None = None  # text data: token id → character
    x_val: Tensor | None = None  # the validation set, for probes that read it
    y_val: Tensor | None = None
    optimizer: torch.optim.Optimizer | None = None  # the loop's own (probes read its state and hyperparameters, never step it)
    distributed: bool = False  # torch.distributed: each rank sees its share of the batch (gradient statistics join them)
    board: Blackboard = field(default_factory=Blackboard)


@dataclass
class Batch:
    """One training step as probes see it."""

    step: int
    x: Tensor
    y: Tensor
    idx: Tensor  # the batch's rows of the training set
    losses: Tensor  # each example's loss at the weights before the update (detached)
    loss: float  # their mean, which the step trains on
    lr: float


@dataclass
class Output:
    """What a hook hands the runner: series points at the hook's step, result documents, tensors to keep."""

    metrics: dict[str, float] = field(default_factory=dict)
    results: list[tuple[int, Document]] = field(default_factory=list)  # (step, document)
    artifacts: dict[str, tuple[dict[str, Tensor], dict[str, str]]] = field(default_factory=dict)  # kind → (tensors, metadata)


@dataclass
class Calls:
    """The runner's services to a probe during one hook: progress text, cancellation, partial results."""

    report: Callable[[str], None] = lambda _: None
    should_stop: Callable[[], bool] = lambda: False
    # A long probe may publish a partial result while it runs (the dashboard draws it); the final one replaces it.
    publish: Callable[[Document], None] = lambda _: None


class Probe:
    """One analysis during training. Subclasses set `name` and `Settings` and override the hooks they need."""

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]

    def __init__(self, cfg: Any, run: Run) -> None:
        self.cfg, self.run = cfg, run

    def due(self, step: int) -> bool:
        """Whether the probe runs at step s (the runner calls before_step only then)."""
        return self.cfg.due(step, self.run.total)

    def before_step(self, step: int, calls: Calls) -> Output | None:
        """At a due step, with the weights before update s."""
        return None

    def capture(self, step: int) -> AbstractContextManager[Any]:
        return nullcontext()

    def after_forward(self, batch: Batch) -> Output | None:
        return None

    def after_backward(self, batch: Batch) -> Output | None:
        return None

    def after_step(self, batch: Batch) -> Output | None:
        return None

    def finish(self, total: int, calls: Calls) -> Output | None:
        """After the last update: a scheduled probe runs here when its schedule says `end`."""
        return self.before_step(total, calls) if self.due(total) else None
