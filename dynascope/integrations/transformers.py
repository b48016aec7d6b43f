"""Track a Hugging Face `Trainer`: `Trainer(..., callbacks=[DynascopeCallback("my-run", probes=..., probe_batch=...)])`.

The Trainer hands its batch only to the model (`model(**inputs)`), so the step is read there: a training forward
starts step s (the probes due at s run, then the gradient statistics' capture begins) and gives the step's
outputs and `labels`; the end of that forward's backward (read from autograd, before the Trainer clips the
gradient) is where the gradient statistics are taken; `on_optimizer_step` is after the update. The Hessian,
landscape, collapse and signals probes compute on `probe_batch = (input_ids, labels)` with `loss_fn(model(x), y)`:
by default the cross-entropy the model's own loss is (a causal language model's logits at t against the label
at t + 1; -100 ignored). Every number the Trainer logs becomes a series (`loss` → `train/loss`, `eval_loss` →
`val/loss`). A cancel in the dashboard stops the Trainer at the end of the step.

Gradient statistics need one forward per update: with `gradient_accumulation_steps` > 1 they are refused.
Under torch.distributed every process makes the callback; rank 0 makes the run (see dynascope.tracker).
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import dynascope
from dynascope.integrations.common import Tracking
from dynascope.watching import Stepper

IGNORED = -100  # the label Hugging Face's losses skip
HYPERPARAMETERS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "seed",
)


def _aligned(out: Any, labels: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    logits = out.logits if hasattr(out, "logits") else out
    if causal:  # position t predicts the token at t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def model_loss(causal: bool) -> tuple[Any, Any]:
    """(mean loss, each example's loss) as a Hugging Face model computes its own cross-entropy."""

    def loss_fn(out: Any, labels: Tensor) -> Tensor:
        return F.cross_entropy(*_aligned(out, labels, causal), ignore_index=IGNORED)

    def example_loss(out: Any, labels: Tensor) -> Tensor:
        logits, flat = _aligned(out, labels, causal)
        each = F.cross_entropy(logits, flat, ignore_index=IGNORED, reduction="none").view(len(labels), -1)
        kept = (flat != IGNORED).view(len(labels), -1)
        return (each * kept).sum(1) / kept.sum(1).clamp_min(1)

    return loss_fn, example_loss


def _causal(model: nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


class DynascopeCallback(TrainerCallback):
    def __init__(
        self,
        name: str | None = None,
        *,
        probes: dict | None = None,
        probe_batch: tuple[Tensor, Tensor] | None = None,
        loss_fn: Any = None,
        example_loss: Any = None,
        config: dict | None = None,
        **init: Any,
    ) -> None:
        self.tracking = Tracking.of(name, probes, probe_batch, loss_fn, example_loss, config, init)
        self.run: dynascope.Run | None = None
        self.stepper: Stepper | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.labels: Tensor | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        model: nn.Module = kw["model"]
        if self.tracking.settings.gradstats is not None and args.gradient_accumulation_steps > 1:
            raise ValueError("DynascopeCallback: gradient statistics need one forward per update (gradient_accumulation_steps=1)")
        config = {k: v for k, v in args.to_dict().items() if k in HYPERPARAMETERS} | {"model_type": getattr(model.config, "model_type", "")}
        total = state.max_steps if state.max_steps > 0 else None
        optimizer = getattr(kw["optimizer"], "optimizer", kw["optimizer"])  # (accelerate wraps the torch optimizer)
        losses = model_loss(_causal(model))
        self.run, self.stepper = self.tracking.start(
            model, optimizer, framework="transformers", name=type(model).__name__, config=config, total=total, losses=losses
        )
        self.handles = [
            model.register_forward_pre_hook(self._forward, with_kwargs=True),
            model.register_forward_hook(self._outputs, with_kwargs=True),
        ]

    def _training(self, module: nn.Module) -> bool:
        stepper = self.stepper
        return stepper is not None and not stepper.inside and module.training and torch.is_grad_enabled()

    def _forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._training(module) or self.stepper.started:  # type: ignore[union-attr]
            return
        self.labels = kwargs.get("labels")
        self.stepper.start(kwargs.get("input_ids", args[0] if args else None))  # type: ignore[union-attr]

    def _outputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        stepper = self.stepper
        if not self._training(module) or stepper is None or not stepper.started or stepper.batch is not None:
            return
        if self.labels is None:
            raise ValueError("DynascopeCallback: the Trainer's batches need `labels` (the probes' targets)")
        loss = output.loss if getattr(output, "loss", None) is not None else stepper.loss_fn(output, self.labels)
        stepper.forward_done(self.labels, float(loss.detach()))
        stepper.on_backward_end(output.logits)  # (before the Trainer clips the gradient)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.stepper is not None:
            self.stepper.after_update()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.run is not None and self.run.should_stop():
            control.should_training_stop = True

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict | None = None, **kw: Any) -> None:
        if self.run is None or not logs:
            return
        series = {_series_name(k): float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(series, step=max(state.global_step - 1, 0))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        for handle in self.handles:
            handle.remove()
        if self.stepper is not None and self.run is not None:
            self.stepper.close()
            self.run.finish("cancelled" if self.run.cancelled.is_set() else "succeeded")
            self.stepper = None


SERIES = {"learning_rate": "lr", "train_loss": "train/mean_loss"}  # the learning rate as the training view draws it; the run's mean


def _series_name(key: str) -> str:
    """The Trainer's log keys as series: `eval_loss` → `val/loss`, `loss` → `train/loss`, `learning_rate` → `lr`."""
    if key in SERIES:
        return SERIES[key]
    if key.startswith("eval_"):
        return f"val/{key.removeprefix('eval_')}"
    return f"train/{key.removeprefix('train_')}"
