"""The gradstats probe: statistics of the training step's own gradient, from hooks on the layers during that
step's forward and backward pass (no second pass), and of what successive steps say together."""

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from dynascope.analysis import gradstats as gs
from dynascope.probes.base import Batch, Output, Probe, Run
from dynascope.results import GradStatsDetails
from dynascope.settings import GradStatsProbe

SAMPLE_SEED = 3  # the histogram's rows: run seed + this


class GradStats(Probe):
    name = "gradstats"
    Settings = GradStatsProbe

    def __init__(self, cfg: GradStatsProbe, run: Run) -> None:
        super().__init__(cfg, run)
        self.tape = gs.Tape(run.model)
        self.history = gs.StepHistory(run.model)
        self.noise = gs.NoiseScaleEMA(cfg.ema)
        self.two_batch = gs.NoiseScaleEMA(cfg.ema)
        self.last_details: int | None = None
        if cfg.histogram_examples:
            n = len(run.y_train)
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(run.seed + SAMPLE_SEED))[: cfg.histogram_examples]
            self.sample = (run.x_train[rows.to(run.x_train.device)], run.y_train[rows.to(run.y_train.device)])

    def capture(self, step: int) -> AbstractContextManager[Any]:
        return self.tape if self.due(step) else nullcontext()

    def after_backward(self, batch: Batch) -> Output | None:
        """The statistics, before the optimizer's step (the gradient in `.grad` is untouched)."""
        if not self.due(batch.step):
            return None
        cfg, run = self.cfg, self.run
        every = cfg.details_every
        detailed = self.last_details is None or every is None or batch.step - self.last_details >= every
        moments, loss = gs.moments(self.tape, run.loss_fn, batch.x, batch.y), batch.loss
        if run.distributed:
            moments, loss = gs.across_ranks(moments, loss)
        stats = gs.statistics(loss, moments, dead_fraction=detailed)
        metrics = stats.as_metrics(batch.lr)
        metrics["grad/noise_scale_ema"] = self.noise.update(stats.grad_sq_unbiased, stats.trace_sigma)
        if cfg.two_batch is not None and cfg.two_batch < len(batch.x):
            metrics |= self._two_batch(batch, stats.grad_norm**2, stats.batch_size)
        metrics.update(self.history.before_step())
        output = Output(metrics)
        if detailed:
            self.last_details = batch.step
            output.results.append((batch.step, self._details(stats)))
        self.tape.saved.clear()
        return output

    def _two_batch(self, batch: Batch, big: float, big_size: int) -> dict[str, float]:
        """B_simple from b of the batch's examples against the whole batch (the batch comes shuffled: its first
        examples are a random subset; under torch.distributed, b of this rank's against the global batch)."""
        small = self.cfg.two_batch
        assert small is not None
        small_sq = gs.batch_grad_sq(self.run.model, self.run.loss_fn, batch.x[:small], batch.y[:small])
        grad_sq, trace = gs.two_batch_noise(small_sq, big, small, big_size)
        return {
            "grad/noise_scale_two_batch": trace / grad_sq if grad_sq > 0 else math.inf,
            "grad/noise_scale_two_batch_ema": self.two_batch.update(grad_sq, trace),
        }

    def _details(self, stats: gs.BatchStatistics) -> GradStatsDetails:
        details = GradStatsDetails(rules=stats.rules, batch_size=stats.batch_size, dead_fraction=stats.dead_fraction)
        if self.cfg.spectra:
            details.spectra = gs.layer_spectra(self.tape)
        if self.cfg.histogram_examples:
            model, loss_fn = self.run.model, self.run.loss_fn
            details.histogram = gs.sampled_histogram(model, loss_fn, *self.sample, self.cfg.histogram_elements, self.run.seed)
        return details

    def after_step(self, batch: Batch) -> Output | None:
        return Output(self.history.after_step()) if self.due(batch.step) else None
