"""The training loop. It knows nothing of the database: it reports through a Recorder."""

import enum
import math
import time
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from backend.spec import AdamOptimizer, JobSpec, SAMOptimizer, TransformerModel
from worker.training import data, models
from worker.training.checkpoint import TrainState, pack
from worker.training.optim import (
    SAM,
    adam_preconditioner,
    base_config,
    lr_factor,
    make_example_loss,
    make_loss,
    make_optimizer,
    stability_threshold,
)
from worker.training.gradstats_probe import GradStatsTracker
from worker.training.landscapes import LandscapeTracker
from worker.training.signals_probe import SignalsTracker
from worker.training.probes import HessianTracker, Probe, ProbeContext, ProbeStopped


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
def evaluate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:  # type: ignore[no-untyped-def]
    model.eval()
    out = model(x)
    metrics = {"loss": loss_fn(out, y).item()}
    if not y.is_floating_point():
        metrics["accuracy"] = (out.argmax(-1) == y).float().mean().item()
    model.train()
    return metrics


def _run_probes(
    probes: list[Probe], step: int, total: int, ctx: ProbeContext, recorder: Recorder, spent: dict[str, float]
) -> None:
    for probe in probes:
        if not probe.schedule.due(step, total):
            continue
        recorder.progress(step, total, f"probe {probe.name} at step {step}")
        ctx.report = lambda stage, name=probe.name: recorder.progress(step, total, f"probe {name} at step {step}: {stage}")
        ctx.publish = lambda payload, name=probe.name: recorder.result(name, step, payload)
        started = time.perf_counter()
        output = probe(step, ctx)
        seconds = time.perf_counter() - started
        spent[probe.name] = spent.get(probe.name, 0.0) + seconds
        recorder.log(step, {**output.metrics, f"time/{probe.name}_seconds": seconds})
        if output.result is not None:
            recorder.result(probe.name, step, {**output.result, "seconds": seconds})
        for kind, (tensors, metadata) in output.artifacts.items():
            recorder.save_tensors(kind, step, tensors, metadata)


def build_probes(spec: JobSpec) -> list[Probe]:
    probes: list[Probe] = []
    if spec.probes.hessian is not None:
        probes.append(HessianTracker(spec.probes.hessian))
    if spec.probes.landscape is not None:
        probes.append(LandscapeTracker(spec.probes.landscape))
    return probes


def train(
    spec: JobSpec,
    recorder: Recorder,
    device: torch.device,
    resume: TrainState | None = None,
    uploads: Callable[[str], Path] | None = None,
) -> Outcome:
    """Train the spec's model; step s logs the batch loss at the weights before update s.

    With `resume`, the run continues from that state exactly as if it had never stopped (on CPU, the same
    numbers bit for bit).
    """
    try:
        return _train(spec, recorder, device, resume, uploads)
    except ProbeStopped:
        return Outcome.stopped


@dataclass
class Prepared:
    split: data.Split
    model: nn.Module
    params: list[torch.Tensor]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    example_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # ℓ_i, whose mean the step trains on
    optimizer: torch.optim.Optimizer


def prepare(spec: JobSpec, device: torch.device, uploads: Callable[[str], Path] | None = None) -> Prepared:
    """Data, model (initialized from the spec's seed), loss and optimizer, as a run of this spec starts."""
    torch.manual_seed(spec.train.seed)
    context = spec.model.context if isinstance(spec.model, TransformerModel) else None
    split = data.load(spec.data, spec.train.seed, context, uploads).to(device)
    model = models.build(spec.model, split.input_shape, split.n_classes or 1).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    z_loss = spec.model.z_loss if isinstance(spec.model, TransformerModel) else 0.0
    loss_fn = make_loss(spec.train.loss, split.n_classes, z_loss)
    example_loss = make_example_loss(spec.train.loss, split.n_classes, z_loss)
    return Prepared(split, model, params, loss_fn, example_loss, make_optimizer(spec.optimizer, params))


def probe_context(spec: JobSpec, run: Prepared, should_stop: Callable[[], bool]) -> ProbeContext:
    current_lr = lambda: run.optimizer.param_groups[0]["lr"]  # noqa: E731
    return ProbeContext(
        run.model, run.loss_fn, run.split.x_train, run.split.y_train, run.split.n_classes, spec.train.seed,
        threshold=lambda: stability_threshold(spec.optimizer, current_lr()),
        preconditioner=lambda: adam_preconditioner(run.optimizer, run.params, spec.optimizer),
        adaptive=isinstance(base_config(spec.optimizer), AdamOptimizer),
        should_stop=should_stop,
    )  # fmt: skip


def _signals_tracker(spec: JobSpec, run: Prepared, probes: list[Probe]) -> SignalsTracker | None:
    """The signals probe, fed the Hessian probe's latest top eigenvector and sharpness when there is one."""
    if spec.probes.signals is None:
        return None
    hessian = next((p for p in probes if isinstance(p, HessianTracker)), None)

    def top_eigenvector() -> tuple[int, torch.Tensor] | None:
        return None if hessian is None or hessian.previous is None else (hessian.last_step, hessian.previous[:, 0])

    split = run.split
    full_batch = spec.train.batch_size >= len(split.y_train)
    return SignalsTracker(
        spec.probes.signals, run.example_loss, split.x_train, split.y_train, spec.train.seed, full_batch,
        top_eigenvector, split.vocab, sharpness=lambda: None if hessian is None else hessian.latest_sharpness,
    )  # fmt: skip


def _train(
    spec: JobSpec, recorder: Recorder, device: torch.device, resume: TrainState | None, uploads: Callable[[str], Path] | None
) -> Outcome:
    cfg = spec.train
    run = prepare(spec, device, uploads)
    split, model, params, loss_fn, optimizer = run.split, run.model, run.params, run.loss_fn, run.optimizer
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    sam = SAM(spec.optimizer.rho) if isinstance(spec.optimizer, SAMOptimizer) else None
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if cfg.precision == "bf16" and device.type == "cuda"
        else nullcontext()
    )
    current_lr = lambda: optimizer.param_groups[0]["lr"]  # noqa: E731
    probes = build_probes(spec)
    ctx = probe_context(spec, run, recorder.should_stop)
    watch = spec.probes.gradstats
    stats = GradStatsTracker(watch, model, split.x_train, split.y_train, cfg.seed, cfg.steps) if watch else None
    signals = _signals_tracker(spec, run, probes)
    spent: dict[str, float] = {}
    batches = torch.Generator().manual_seed(cfg.seed)
    n_train = len(split.y_train)
    batch_size = min(cfg.batch_size, n_train)
    order = torch.randperm(n_train, generator=batches)
    cursor = 0
    train_seconds, first_loss, start = 0.0, math.nan, 0
    if resume is None:
        recorder.result(
            "summary",
            0,
            {"parameters": models.parameter_count(model), "train_examples": n_train, "val_examples": len(split.y_val),
             "modality": split.modality, "classes": split.n_classes, "planted": split.planted},  # fmt: skip
        )
    else:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        torch.set_rng_state(resume.torch_rng)
        batches.set_state(resume.batch_rng)
        order, cursor, first_loss = resume.order, resume.cursor, resume.first_loss
        train_seconds, spent, start = resume.train_seconds, dict(resume.probe_seconds), resume.step

    def state(step: int) -> TrainState:
        return TrainState(
            step, model.state_dict(), optimizer.state_dict(), torch.get_rng_state(), batches.get_state(), order,
            cursor, first_loss, train_seconds, spent,
        )  # fmt: skip

    # (A resumed run knows the lr it last logged: the series matches an uninterrupted run's exactly.)
    last_factor = lr_factor(cfg.schedule, start - 1, cfg.steps) if start else math.nan
    for step in range(start, cfg.steps):
        if recorder.should_stop():
            return Outcome.stopped
        if cfg.checkpoint_every and step > start and step % cfg.checkpoint_every == 0:
            recorder.save_tensors("checkpoint", step, *pack(state(step)))
        factor = lr_factor(cfg.schedule, step, cfg.steps)
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * factor
        _run_probes(probes, step, cfg.steps, ctx, recorder, spent)
        started = time.perf_counter()
        if cursor + batch_size > n_train:
            order, cursor = torch.randperm(n_train, generator=batches), 0
        idx = order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        evaluating = step % cfg.eval_every == 0
        if evaluating:
            recorder.log(step, {f"val/{k}": v for k, v in evaluate(model, loss_fn, split.x_val, split.y_val).items()})
        x, y = split.x_train[idx], split.y_train[idx]
        watching = stats is not None and stats.due(step)
        with autocast, stats.capture(step) if stats is not None else nullcontext():
            out = model(x)
            losses = run.example_loss(out.float(), y)
            loss = losses.mean()
        loss_value = loss.item()
        metrics = {"train/loss": loss_value}
        # The loss every step; the batch accuracy and the lr (a step function) where they are cheap to keep.
        if evaluating or factor != last_factor or step == cfg.steps - 1:
            metrics["lr"] = current_lr()
            last_factor = factor
        if evaluating and not y.is_floating_point():
            metrics["train/accuracy"] = (out.argmax(-1) == y).float().mean().item()
        if step == 0:
            first_loss = loss_value
        if not math.isfinite(loss_value) or (
            cfg.divergence_factor is not None and loss_value > cfg.divergence_factor * first_loss
        ):
            recorder.log(step, metrics)
            recorder.progress(step, cfg.steps, f"diverged at step {step}: loss {loss_value:.4g}")
            return Outcome.diverged
        if signals is not None:
            before = signals.seconds
            metrics.update(signals.observe(step, model, losses.detach(), idx))
            for at, document in signals.reports:
                recorder.result("signals", at, document)
            signals.reports.clear()
            spent["signals"] = spent.get("signals", 0.0) + signals.seconds - before
            started += signals.seconds - before  # the probe's time, not the training's
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats_seconds = stats.seconds if stats is not None else 0.0
        if watching:
            found, details = stats.after_backward(step, loss_value, loss_fn, x, y, current_lr())  # type: ignore[union-attr]
            metrics.update(found)
            if details is not None:
                recorder.result("gradstats", step, details)
        if sam is not None:
            shifts = sam.ascend(params)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss_fn(model(x).float(), y).backward()
            sam.descend(params, shifts)
        if cfg.grad_clip is not None:
            metrics["train/grad_norm"] = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        optimizer.step()
        if watching:
            metrics.update(stats.after_step())  # type: ignore[union-attr]
        recorder.log(step, metrics)
        if stats is not None:  # the statistics' time is the probe's, not the training's
            spent["gradstats"] = spent.get("gradstats", 0.0) + stats.seconds - stats_seconds
        train_seconds += time.perf_counter() - started - (stats.seconds - stats_seconds if stats is not None else 0.0)
        recorder.progress(step + 1, cfg.steps, "training")
    if signals is not None:
        signals.finish(cfg.steps)
        for at, document in signals.reports:
            recorder.result("signals", at, document)
    final = evaluate(model, loss_fn, split.x_val, split.y_val)
    recorder.log(cfg.steps, {f"val/{k}": v for k, v in final.items()})
    _run_probes(probes, cfg.steps, cfg.steps, ctx, recorder, spent)
    if start < cfg.steps:  # (a resumed run that had already finished keeps its final checkpoint)
        recorder.progress(cfg.steps, cfg.steps, "saving checkpoint")
        recorder.save_tensors("checkpoint", cfg.steps, *pack(state(cfg.steps)))
    recorder.result(
        "summary",
        cfg.steps,
        {
            **{f"val_{k}": v for k, v in final.items()},
            "train_seconds": train_seconds,
            "steps_per_second": cfg.steps / train_seconds if train_seconds else None,
            "probe_seconds": spent,
        },
    )
    return Outcome.finished
