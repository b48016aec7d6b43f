"""Analyses of checkpoints a job kept, asked for after the fact (the job may be long finished)."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from backend.spec import HessianAnalysis, HessianProbe, InterpolationAnalysis, JobSpec, LandscapeAnalysis, TrajectoryAnalysis
from worker.training.checkpoint import FORMAT, read, unpack
from worker.training.landscapes import GridPlan, finish, plan_interpolation, plan_landscape, plan_trajectory, run_plan
from worker.training.loop import prepare, probe_context
from worker.training.optim import base_config, lr_factor
from worker.training.probes import HessianTracker, ProbeContext, ProbeOutput


def _reader(path: Path) -> Callable[[str], Tensor]:
    def tensor(name: str) -> Tensor:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    return tensor


def context_at(
    spec: JobSpec,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    uploads: Callable[[str], Path] | None = None,
) -> ProbeContext:
    """The probes' view of the run at a checkpoint: its weights, and the lr (and Adam state) it had then."""
    run = prepare(spec, device, uploads)
    run.model.load_state_dict({k: v for k, v in tensors.items() if "/" not in k})
    if metadata.get("format") == FORMAT:
        run.optimizer.load_state_dict(unpack(tensors, metadata).optimizer)
    lr = base_config(spec.optimizer).lr * lr_factor(spec.train.schedule, min(step, spec.train.steps - 1), spec.train.steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return probe_context(spec, run, should_stop=lambda: False)


GridAnalysis = LandscapeAnalysis | TrajectoryAnalysis | InterpolationAnalysis


def plan_analysis(
    request: GridAnalysis,
    ctx: ProbeContext,
    step: int,
    tensors: dict[str, Tensor],
    kept: Mapping[tuple[int, int], Path],
    job_id: int | None,
) -> GridPlan:
    """The grid of a landscape, trajectory or interpolation analysis. `kept` maps (job id, step) to the
    checkpoint files a trajectory or an interpolation needs besides this one."""
    if isinstance(request, LandscapeAnalysis):
        return plan_landscape(request, ctx)
    if isinstance(request, TrajectoryAnalysis):
        return plan_trajectory(request, ctx, [(s, _reader(p)) for (j, s), p in sorted(kept.items()) if j == job_id and s <= step])
    to = (request.to_job, max(s for j, s in kept if j == request.to_job)) if request.to_job else (job_id, request.to_step)
    end, _ = read(kept[to])
    model_part = {k: v for k, v in tensors.items() if "/" not in k}
    ends = {"from": {"job": job_id, "step": step}, "to": {"job": to[0], "step": to[1]}}
    return plan_interpolation(request, ctx, model_part, {k: v for k, v in end.items() if "/" not in k}, ends)


def analyze_checkpoint(
    spec: JobSpec,
    request: HessianAnalysis | GridAnalysis,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    uploads: Callable[[str], Path] | None = None,
    report: Callable[[str], None] = lambda _: None,
    kept: Mapping[tuple[int, int], Path] | None = None,
    job_id: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    publish: Callable[[dict[str, Any]], None] = lambda _: None,
) -> ProbeOutput:
    """The whole analysis at the checkpoint's weights, in this process (it stops with ProbeStopped when
    `should_stop` says so, and `publish`es partial grids while it runs)."""
    ctx = context_at(spec, step, tensors, metadata, device, uploads)
    ctx.report, ctx.should_stop, ctx.publish = report, should_stop, publish
    if isinstance(request, HessianAnalysis):
        probe = HessianTracker(HessianProbe(at=[step], **request.model_dump(exclude={"kind", "step"})))
        return probe(step, ctx)
    plan = plan_analysis(request, ctx, step, tensors, kept or {}, job_id)
    result = finish(plan, run_plan(ctx, plan))
    return ProbeOutput({}, result, {directions_kind(request): plan.direction_tensors()})


def directions_kind(request: GridAnalysis) -> str:
    """The artifact kind of a grid's directions (for an interpolation: θ_to − θ_from)."""
    return {"landscape": "landscape-directions", "trajectory": "trajectory-directions"}.get(request.kind, "interpolation-direction")
