"""Analyses of a checkpoint a job kept, asked for after the fact (the job may be long finished)."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from backend.spec import HessianAnalysis, HessianProbe, JobSpec, LandscapeAnalysis
from worker.training.checkpoint import FORMAT, unpack
from worker.training.loop import prepare, probe_context
from worker.training.optim import base_config, lr_factor
from worker.training.landscape_probe import landscape
from worker.training.probes import HessianTracker, ProbeOutput


def analyze_checkpoint(
    spec: JobSpec,
    request: HessianAnalysis | LandscapeAnalysis,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    uploads: Callable[[str], Path] | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> ProbeOutput:
    """The probe at the checkpoint's weights, with the lr (and Adam state) the run had at that step."""
    run = prepare(spec, device, uploads)
    run.model.load_state_dict({k: v for k, v in tensors.items() if "/" not in k})
    if metadata.get("format") == FORMAT:
        run.optimizer.load_state_dict(unpack(tensors, metadata).optimizer)
    lr = base_config(spec.optimizer).lr * lr_factor(spec.train.schedule, min(step, spec.train.steps - 1), spec.train.steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    ctx = probe_context(spec, run, should_stop=lambda: False)
    ctx.report = report
    if isinstance(request, LandscapeAnalysis):
        return landscape(request, step, ctx)
    probe = HessianTracker(HessianProbe(at=[step], **request.model_dump(exclude={"kind", "step"})))
    return probe(step, ctx)
