"""The gradstats probe: statistics of the training step's own gradient, hooked into that step."""

import math
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from backend.spec import GradStatsProbe
from worker.analysis import gradstats as gs
from worker.training.optim import LossFn


class GradStatsTracker:
    """Use around a training step: `capture()` over the forward, `after_backward()` before the optimizer's
    step (the statistics; the gradient in `.grad` is untouched), `after_step()` after it."""

    name = "gradstats"

    def __init__(self, cfg: GradStatsProbe, model: nn.Module, x_train: Tensor, y_train: Tensor, seed: int, total: int) -> None:
        self.cfg, self.model, self.total = cfg, model, total
        self.tape = gs.Tape(model)
        self.history = gs.StepHistory(model)
        self.noise = gs.NoiseScaleEMA(cfg.ema)
        self.two_batch = gs.NoiseScaleEMA(cfg.ema)
        self.last_details: int | None = None
        self.seconds = 0.0
        if cfg.histogram_examples:
            rows = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + 3))[: cfg.histogram_examples]
            self.sample = (x_train[rows.to(x_train.device)], y_train[rows.to(y_train.device)])
        self.seed = seed

    def due(self, step: int) -> bool:
        return self.cfg.due(step, self.total) or (step == self.total - 1 and "end" in self.cfg.at)

    def capture(self, step: int) -> AbstractContextManager[Any]:
        return self.tape if self.due(step) else nullcontext()

    def after_backward(
        self, step: int, loss: float, loss_fn: LossFn, x: Tensor, y: Tensor, lr: float
    ) -> tuple[dict[str, float], dict[str, Any] | None]:
        started = time.perf_counter()
        every = self.cfg.details_every
        detailed = self.last_details is None or every is None or step - self.last_details >= every
        stats = gs.statistics(loss, gs.moments(self.tape, loss_fn, x, y), dead_fraction=detailed)
        metrics = stats.as_metrics(lr)
        metrics["grad/noise_scale_ema"] = self.noise.update(stats.grad_sq_unbiased, stats.trace_sigma)
        small = self.cfg.two_batch
        if small is not None and small < len(x):  # the batch comes shuffled: its first examples are a random subset
            grad_sq, trace = gs.two_batch_noise(gs.batch_grad_sq(self.model, loss_fn, x[:small], y[:small]), stats.grad_norm**2, small, len(x))
            metrics["grad/noise_scale_two_batch"] = trace / grad_sq if grad_sq > 0 else math.inf
            metrics["grad/noise_scale_two_batch_ema"] = self.two_batch.update(grad_sq, trace)
        metrics.update(self.history.before_step())
        details = None
        if detailed:
            self.last_details = step
            details = {"rules": stats.rules, "batch_size": stats.batch_size, "dead_fraction": stats.dead_fraction}
            if self.cfg.spectra:
                details["spectra"] = gs.layer_spectra(self.tape)
            if self.cfg.histogram_examples:
                details["histogram"] = gs.sampled_histogram(self.model, loss_fn, *self.sample, self.cfg.histogram_elements, self.seed)
        self.tape.saved.clear()
        self.seconds += time.perf_counter() - started
        return metrics, details

    def after_step(self) -> dict[str, float]:
        started = time.perf_counter()
        out = self.history.after_step()
        self.seconds += time.perf_counter() - started
        return out
