"""The training loop. It knows nothing of the database: it reports through a Recorder."""

import enum
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from backend.spec import JobSpec
from worker.training import data, models


class Recorder(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def progress(self, step: int, total: int, stage: str) -> None: ...
    def should_stop(self) -> bool: ...
    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> None: ...
    def result(self, kind: str, step: int, payload: dict[str, Any]) -> None: ...


class Outcome(enum.StrEnum):
    finished = "finished"
    stopped = "stopped"  # the recorder asked to stop (cancel, or the job was taken away)
    diverged = "diverged"


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return loss, accuracy


def train(spec: JobSpec, recorder: Recorder, device: torch.device) -> Outcome:
    """Train the spec's model with SGD; step s logs the batch loss at the weights before update s."""
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    split = data.digits(spec.data.val_fraction, cfg.seed).to(device)
    model = models.mlp(split.x_train.shape[1], spec.model.widths, split.n_classes, spec.model.activation).to(device)
    opt = spec.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
    )
    batches = torch.Generator().manual_seed(cfg.seed)
    n_train = len(split.y_train)
    batch_size = min(cfg.batch_size, n_train)
    order = torch.randperm(n_train, generator=batches)
    cursor = 0
    recorder.result(
        "summary",
        0,
        {"parameters": models.parameter_count(model), "train_examples": n_train, "val_examples": len(split.y_val)},
    )
    started = time.perf_counter()
    for step in range(cfg.steps):
        if recorder.should_stop():
            return Outcome.stopped
        if cursor + batch_size > n_train:
            order, cursor = torch.randperm(n_train, generator=batches), 0
        idx = order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        if step % cfg.eval_every == 0:
            val_loss, val_acc = evaluate(model, split.x_val, split.y_val)
            recorder.log(step, {"val/loss": val_loss, "val/accuracy": val_acc})
        logits = model(split.x_train[idx])
        loss = nn.functional.cross_entropy(logits, split.y_train[idx])
        loss_value = loss.item()
        accuracy = (logits.argmax(1) == split.y_train[idx]).float().mean().item()
        recorder.log(step, {"train/loss": loss_value, "train/accuracy": accuracy, "lr": opt.lr})
        if step == 0:
            first_loss = loss_value
        if not math.isfinite(loss_value) or (
            cfg.divergence_factor is not None and loss_value > cfg.divergence_factor * first_loss
        ):
            recorder.progress(step, cfg.steps, f"diverged at step {step}: loss {loss_value:.4g}")
            return Outcome.diverged
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recorder.progress(step + 1, cfg.steps, "training")
    val_loss, val_acc = evaluate(model, split.x_val, split.y_val)
    recorder.log(cfg.steps, {"val/loss": val_loss, "val/accuracy": val_acc})
    recorder.progress(cfg.steps, cfg.steps, "saving checkpoint")
    recorder.save_checkpoint(cfg.steps, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    elapsed = time.perf_counter() - started
    recorder.result(
        "summary",
        cfg.steps,
        {"val_loss": val_loss, "val_accuracy": val_acc, "seconds": elapsed, "steps_per_second": cfg.steps / elapsed},
    )
    return Outcome.finished
