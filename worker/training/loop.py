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
from worker.training.probes import Probe, ProbeContext, ProbeStopped, build_probes


class Recorder(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def progress(self, step: int, total: int, stage: str) -> None: ...
    def should_stop(self) -> bool: ...
    def save_tensors(
        self, kind: str, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> None: ...
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


def _run_probes(
    probes: list[Probe], step: int, total: int, ctx: ProbeContext, recorder: Recorder, spent: dict[str, float]
) -> None:
    for probe in probes:
        if not probe.schedule.due(step, total):
            continue
        recorder.progress(step, total, f"probe {probe.name} at step {step}")
        ctx.report = lambda stage, name=probe.name: recorder.progress(step, total, f"probe {name} at step {step}: {stage}")
        started = time.perf_counter()
        output = probe(step, ctx)
        seconds = time.perf_counter() - started
        spent[probe.name] = spent.get(probe.name, 0.0) + seconds
        recorder.log(step, {**output.metrics, f"time/{probe.name}_seconds": seconds})
        if output.result is not None:
            recorder.result(probe.name, step, {**output.result, "seconds": seconds})
        for kind, (tensors, metadata) in output.artifacts.items():
            recorder.save_tensors(kind, step, tensors, metadata)


def train(spec: JobSpec, recorder: Recorder, device: torch.device) -> Outcome:
    """Train the spec's model with SGD; step s logs the batch loss at the weights before update s."""
    try:
        return _train(spec, recorder, device)
    except ProbeStopped:
        return Outcome.stopped


def _train(spec: JobSpec, recorder: Recorder, device: torch.device) -> Outcome:
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    split = data.digits(spec.data.val_fraction, cfg.seed).to(device)
    model = models.mlp(split.x_train.shape[1], spec.model.widths, split.n_classes, spec.model.activation).to(device)
    opt = spec.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
    )
    probes = build_probes(spec)
    ctx = ProbeContext(
        model, nn.functional.cross_entropy, split.x_train, split.y_train, split.n_classes, opt.lr, opt.momentum, cfg.seed,
        should_stop=recorder.should_stop,
    )  # fmt: skip
    spent: dict[str, float] = {}
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
    train_seconds = 0.0
    for step in range(cfg.steps):
        if recorder.should_stop():
            return Outcome.stopped
        _run_probes(probes, step, cfg.steps, ctx, recorder, spent)
        started = time.perf_counter()
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
        train_seconds += time.perf_counter() - started
        recorder.progress(step + 1, cfg.steps, "training")
    val_loss, val_acc = evaluate(model, split.x_val, split.y_val)
    recorder.log(cfg.steps, {"val/loss": val_loss, "val/accuracy": val_acc})
    _run_probes(probes, cfg.steps, cfg.steps, ctx, recorder, spent)
    recorder.progress(cfg.steps, cfg.steps, "saving checkpoint")
    recorder.save_tensors("checkpoint", cfg.steps, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    recorder.result(
        "summary",
        cfg.steps,
        {
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "train_seconds": train_seconds,
            "steps_per_second": cfg.steps / train_seconds,
            "probe_seconds": spent,
        },
    )
    return Outcome.finished
