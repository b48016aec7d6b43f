"""What the framework callbacks share: the arguments a callback is given, and the run and probe runner it starts
with them."""

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

import dynascope
from dynascope.settings import Probes
from dynascope.watching import Stepper

Losses = tuple[Any, Any]  # (mean loss, each example's loss) of (outputs, targets)


@dataclass
class Tracking:
    name: str | None
    settings: Probes
    probe_batch: tuple[Tensor, Tensor] | None
    loss_fn: Any
    example_loss: Any
    config: dict | None
    init: dict[str, Any]

    @classmethod
    def of(
        cls, name: str | None, probes: dict | None, probe_batch: Any, loss_fn: Any, example_loss: Any, config: dict | None, init: dict
    ) -> "Tracking":
        return cls(name, Probes.model_validate(probes or {}), probe_batch, loss_fn, example_loss, config, init)

    def start(
        self, model: nn.Module, optimizer: Any, *, framework: str, name: str, config: dict, total: int | None, losses: Losses
    ) -> tuple[dynascope.Run, Stepper]:
        """The run (made on rank 0; a follower on the others) and the probes on `model`; `name`, `config` and
        `losses` are the framework's defaults for what the callback was not given."""
        chosen = self.config if self.config is not None else config
        run = dynascope.init(self.name or name, chosen, framework=framework, total_steps=total, **self.init)  # type: ignore[arg-type]
        device = next(model.parameters()).device
        batch = tuple(t.to(device) for t in self.probe_batch) if self.probe_batch is not None else None
        loss_fn, example_loss = self.loss_fn or losses[0], self.example_loss or losses[1]
        return run, Stepper(run, model, loss_fn, optimizer, batch, self.settings, example_loss=example_loss)  # type: ignore[arg-type]
