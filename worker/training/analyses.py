"""Analyses of checkpoints a job kept, asked for after the fact (the job may be long finished)."""

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from backend.spec import HessianAnalysis, HessianProbe, InterpolationAnalysis, JobSpec, LandscapeAnalysis, TrajectoryAnalysis
from worker.training.checkpoint import FORMAT, read, unpack
from worker.training.landscapes import interpolation, landscape, trajectory
from worker.training.loop import prepare, probe_context
from worker.training.optim import base_config, lr_factor
from worker.training.probes import HessianTracker, ProbeOutput


def _reader(path: Path) -> Callable[[str], Tensor]:
    def tensor(name: str) -> Tensor:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    return tensor


def analyze_checkpoint(
    spec: JobSpec,
    request: HessianAnalysis | LandscapeAnalysis | TrajectoryAnalysis | InterpolationAnalysis,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    uploads: Callable[[str], Path] | None = None,
    report: Callable[[str], None] = lambda _: None,
    kept: Mapping[tuple[int, int], Path] | None = None,
    job_id: int | None = None,
) -> ProbeOutput:
    """The analysis at the checkpoint's weights, with the lr (and Adam state) the run had at that step.

    `kept` maps (job id, step) to the checkpoint files a trajectory or an interpolation needs besides this one.
    """
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
    kept = kept or {}
    if isinstance(request, TrajectoryAnalysis):
        path = [(s, _reader(p)) for (j, s), p in sorted(kept.items()) if j == job_id and s <= step]
        return trajectory(request, ctx, path)
    if isinstance(request, InterpolationAnalysis):
        to = (request.to_job, max(s for j, s in kept if j == request.to_job)) if request.to_job else (job_id, request.to_step)
        end, _ = read(kept[to])
        model_part = {k: v for k, v in tensors.items() if "/" not in k}
        ends = {"from": {"job": job_id, "step": step}, "to": {"job": to[0], "step": to[1]}}
        return interpolation(request, ctx, model_part, {k: v for k, v in end.items() if "/" not in k}, ends)
    probe = HessianTracker(HessianProbe(at=[step], **request.model_dump(exclude={"kind", "step"})))
    return probe(step, ctx)
