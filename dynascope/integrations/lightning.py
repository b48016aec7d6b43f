"""Track a Lightning `Trainer`: `Trainer(callbacks=[DynascopeCallback(probes=..., probe_batch=..., loss_fn=...)])`.

The run is made at `fit` (its config: the module's hyperparameters unless given): on global rank 0 under
torch.distributed, where the other ranks follow (see dynascope.tracker). The probes
follow Lightning's own hooks: a batch's start is step s (the weights before update s; the probes due at s run,
then the capture of the gradient statistics begins, so they come from the step's own backward), the backward
ends it (`on_after_backward`, before clipping and the optimizer's step), the batch's end is after the update.
The Hessian, landscape, collapse and signals probes compute on `probe_batch` with `loss_fn(module(x), y)`: the
module's forward must give the outputs `loss_fn` reads. Every metric the module logs on the step goes to the
run as a series.
"""

from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

import dynascope
from dynascope.integrations.common import Tracking
from dynascope.watching import Stepper

LOSSES = (F.cross_entropy, lambda out, y: F.cross_entropy(out, y, reduction="none"))  # unless the callback is given its own


class DynascopeCallback(pl.Callback):
    def __init__(
        self,
        name: str | None = None,
        *,
        probes: dict | None = None,
        probe_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss_fn: Any = None,
        example_loss: Any = None,
        config: dict | None = None,
        **init: Any,
    ) -> None:
        self.tracking = Tracking.of(name, probes, probe_batch, loss_fn, example_loss, config, init)
        self.run: dynascope.Run | None = None
        self.stepper: Stepper | None = None

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        hyperparameters = {k: v for k, v in dict(module.hparams).items() if _plain(v)}
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.run, self.stepper = self.tracking.start(
            module,
            trainer.optimizers[0],
            framework="lightning",
            name=type(module).__name__,
            config=hyperparameters,
            total=total,
            losses=LOSSES,
        )

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.stepper is not None:
            self.batch = batch
            self.stepper.start(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.stepper is not None and isinstance(self.batch, (tuple, list)) and len(self.batch) > 1:
            target = self.batch[1]
            self.stepper.forward_done(target, float(loss.detach()))

    def on_after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.stepper is not None:
            self.stepper.backward_done()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.stepper is None or self.run is None:
            return
        self.stepper.after_update()
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
            logged.setdefault("train/loss", float(outputs["loss"].detach()))
        self.run.log(logged, step=self.run.step - 1)
        if self.run.should_stop():
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._end("succeeded")

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self._end("cancelled" if isinstance(exception, KeyboardInterrupt) else "failed", f"{type(exception).__name__}: {exception}")

    def _end(self, status: str, error: str | None = None) -> None:
        if self.stepper is not None and self.run is not None:
            self.stepper.close()
            self.run.finish(status, error)  # type: ignore[arg-type]
            self.stepper = None


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
