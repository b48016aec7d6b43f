"""The training loop of a server job: the step, and calls into the probe runner. It knows nothing of the
database: it reports through a Recorder."""

import enum
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.spec import AdamOptimizer, JobSpec, SAMOptimizer, TransformerModel
from dynascope.probes import Batch, ProbeSet, ProbeStopped, Recorder, Run
from dynascope.probes.optimizers import adam_preconditioner, stability_threshold
from dynascope.results import RunEnd, RunFacts
from worker.training import data, models
from worker.training.checkpoint import TrainState, pack
from worker.training.optim import (
    SAM,
    base_config,
    lr_factor,
    make_example_loss,
    make_loss,
    make_optimizer,
)


class Outcome(enum.StrEnum):
    finished = "finished"
    stopped = "stopped"  # the recorder asked to stop (cancel, or the job was taken away)
    diverged = "diverged"


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    out = model(x)
    metrics = {"loss": loss_fn(out, y).item()}
    if not y.is_floating_point():
        metrics["accuracy"] = (out.argmax(-1) == y).float().mean().item()
    model.train()
    return metrics


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
    model = models.build(spec.model, split).to(device)
    models.check_fit(model, split)
    params = [p for p in model.parameters() if p.requires_grad]
    z_loss = spec.model.z_loss if isinstance(spec.model, TransformerModel) else 0.0
    loss_fn = make_loss(spec.train.loss, split.n_classes, z_loss)
    example_loss = make_example_loss(spec.train.loss, split.n_classes, z_loss)
    return Prepared(split, model, params, loss_fn, example_loss, make_optimizer(spec.optimizer, params))


def probe_run(spec: JobSpec, prepared: Prepared) -> Run:
    """What the probes see of this job."""
    optimizer, split = prepared.optimizer, prepared.split
    return Run(
        prepared.model,
        prepared.loss_fn,
        prepared.example_loss,
        split.x_train,
        split.y_train,
        split.n_classes,
        spec.train.seed,
        spec.train.steps,
        threshold=lambda: stability_threshold(optimizer),
        preconditioner=lambda: adam_preconditioner(optimizer, prepared.params),
        adaptive=isinstance(base_config(spec.optimizer), AdamOptimizer),
        full_batch=spec.train.batch_size >= len(split.y_train),
        vocab=split.vocab,
        optimizer=optimizer,
        x_val=split.x_val,
        y_val=split.y_val,
    )


class Batches:
    """The batch order: a permutation of the training set per epoch, from the run's own generator."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size = n, min(size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.cursor = torch.randperm(n, generator=self.generator), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.size > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        self.cursor += self.size
        return self.order[self.cursor - self.size : self.cursor]


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
        return Training(spec, recorder, device, resume, uploads).run()
    except ProbeStopped:
        return Outcome.stopped


class Training:
    """One run of a spec: its state (what a checkpoint keeps) and the loop over its steps."""

    def __init__(
        self, spec: JobSpec, recorder: Recorder, device: torch.device, resume: TrainState | None, uploads: Callable[[str], Path] | None
    ) -> None:
        self.spec, self.recorder, self.device = spec, recorder, device
        self.prepared = prepare(spec, device, uploads)
        self.base_lrs = [group["lr"] for group in self.prepared.optimizer.param_groups]
        self.sam = SAM(spec.optimizer.rho) if isinstance(spec.optimizer, SAMOptimizer) else None
        self.batches = Batches(len(self.prepared.split.y_train), spec.train.batch_size, spec.train.seed)
        self.train_seconds, self.first_loss, self.start = 0.0, math.nan, 0
        # The probes see the initial weights first (distance from initialization, after a resume too).
        spent = resume.probe_seconds if resume is not None else None
        self.probes = ProbeSet.build(spec.probes, probe_run(spec, self.prepared), recorder, spent)
        if resume is not None:
            self._restore(resume)

    def _restore(self, resume: TrainState) -> None:
        self.prepared.model.load_state_dict(resume.model)
        self.prepared.optimizer.load_state_dict(resume.optimizer)
        torch.set_rng_state(resume.torch_rng)
        self.batches.generator.set_state(resume.batch_rng)
        self.batches.order, self.batches.cursor, self.first_loss = resume.order, resume.cursor, resume.first_loss
        self.train_seconds, self.start = resume.train_seconds, resume.step

    def state(self, step: int) -> TrainState:
        p, b = self.prepared, self.batches
        return TrainState(
            step,
            p.model.state_dict(),
            p.optimizer.state_dict(),
            torch.get_rng_state(),
            b.generator.get_state(),
            b.order,
            b.cursor,
            self.first_loss,
            self.train_seconds,
            self.probes.spent,
        )

    def autocast(self) -> AbstractContextManager[Any]:
        if self.spec.train.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def run(self) -> Outcome:
        cfg, split = self.spec.train, self.prepared.split
        if self.start == 0:
            self.recorder.result("summary", 0, self._facts())
        # (A resumed run knows the lr it last logged: the series matches an uninterrupted run's exactly.)
        self.last_factor = lr_factor(cfg.schedule, self.start - 1, cfg.steps) if self.start else math.nan
        for step in range(self.start, cfg.steps):
            if self.recorder.should_stop():
                return Outcome.stopped
            if cfg.checkpoint_every and step > self.start and step % cfg.checkpoint_every == 0:
                self.recorder.save_tensors("checkpoint", step, *pack(self.state(step)))
            if not self.step(step):
                return Outcome.diverged
            self.recorder.progress(step + 1, cfg.steps, "training")
        self.probes.finish()
        final = evaluate(self.prepared.model, self.prepared.loss_fn, split.x_val, split.y_val)
        self.recorder.log(cfg.steps, {f"val/{k}": v for k, v in final.items()})
        if self.start < cfg.steps:  # (a resumed run that had already finished keeps its final checkpoint)
            self.recorder.progress(cfg.steps, cfg.steps, "saving checkpoint")
            self.recorder.save_tensors("checkpoint", cfg.steps, *pack(self.state(cfg.steps)))
        self.recorder.result("summary", cfg.steps, self._end(final))
        return Outcome.finished

    def step(self, step: int) -> bool:
        """Update `step`, with the probes' hooks around it; False when the loss diverged."""
        cfg, p = self.spec.train, self.prepared
        factor = lr_factor(cfg.schedule, step, cfg.steps)
        for group, lr in zip(p.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * factor
        self.probes.before_step(step)
        started, probe_seconds = time.perf_counter(), self.probes.seconds
        idx = self.batches.next().to(self.device)
        evaluating = step % cfg.eval_every == 0
        if evaluating:
            self.recorder.log(step, {f"val/{k}": v for k, v in evaluate(p.model, p.loss_fn, p.split.x_val, p.split.y_val).items()})
        x, y = p.split.x_train[idx], p.split.y_train[idx]
        with self.autocast(), self.probes.capture(step):
            out = p.model(x)
            losses = p.example_loss(out.float(), y)
            loss = losses.mean()
        loss_value = loss.item()
        metrics = {"train/loss": loss_value}
        # The loss every step; the batch accuracy and the lr (a step function) where they are cheap to keep.
        if evaluating or factor != self.last_factor or step == cfg.steps - 1:
            metrics["lr"], self.last_factor = p.optimizer.param_groups[0]["lr"], factor
        if evaluating and not y.is_floating_point():
            metrics["train/accuracy"] = (out.argmax(-1) == y).float().mean().item()
        if step == 0:
            self.first_loss = loss_value
        if not math.isfinite(loss_value) or (cfg.divergence_factor is not None and loss_value > cfg.divergence_factor * self.first_loss):
            self.recorder.log(step, metrics)
            self.recorder.progress(step, cfg.steps, f"diverged at step {step}: loss {loss_value:.4g}")
            return False
        batch = Batch(step, x, y, idx, losses.detach(), loss_value, p.optimizer.param_groups[0]["lr"])
        self.probes.after_forward(batch)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.probes.after_backward(batch)
        self._update(x, y, metrics)
        self.probes.after_step(batch)
        self.recorder.log(step, metrics)
        self.train_seconds += time.perf_counter() - started - (self.probes.seconds - probe_seconds)
        return True

    def _update(self, x: torch.Tensor, y: torch.Tensor, metrics: dict[str, float]) -> None:
        """The optimizer's step on the gradient in `.grad` (SAM: from the ascended weights; clipped if asked)."""
        cfg, p = self.spec.train, self.prepared
        if self.sam is not None:
            shifts = self.sam.ascend(p.params)
            p.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                p.loss_fn(p.model(x).float(), y).backward()
            self.sam.descend(p.params, shifts)
        if cfg.grad_clip is not None:
            metrics["train/grad_norm"] = float(nn.utils.clip_grad_norm_(p.params, cfg.grad_clip))
        p.optimizer.step()

    def _facts(self) -> dict[str, Any]:
        split = self.prepared.split
        return RunFacts(
            parameters=models.parameter_count(self.prepared.model),
            train_examples=len(split.y_train),
            val_examples=len(split.y_val),
            modality=split.modality,
            classes=split.n_classes,
            planted=split.planted,
        ).recorded()

    def _end(self, final: dict[str, float]) -> dict[str, Any]:
        steps = self.spec.train.steps
        return RunEnd(
            **{f"val_{k}": v for k, v in final.items()},
            train_seconds=self.train_seconds,
            steps_per_second=steps / self.train_seconds if self.train_seconds else None,
            probe_seconds=self.probes.spent,
        ).recorded()
