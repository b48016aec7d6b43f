"""Analyses of checkpoints a job kept, asked for after the fact (the job may be long finished).

ANALYSES is the registry of kinds (`hessian`, `landscape`, `trajectory`, `interpolation`, `representations`): what
each computes at a checkpoint, and for a grid its plan (any worker can compute any chunk of it), its number of points and the
artifact kind of its directions. The backend's table of kinds (backend.spec.ANALYSIS_KINDS) holds the same
names; a test checks that they agree."""

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from torch import nn

from backend.spec import (
    HessianAnalysis,
    InterpolationAnalysis,
    JobSpec,
    LandscapeAnalysis,
    RepresentationsAnalysis,
    TrajectoryAnalysis,
)
from dynascope.analysis import cka
from dynascope.probes import Calls, Run
from dynascope.probes.grids import GridPlan, plan_interpolation, plan_landscape, plan_trajectory, run_plan
from dynascope.probes.hessian import measure
from dynascope.probes.representations import chosen_layers, estimator, layer_grams, sample
from dynascope.results import Endpoint, RepresentationsComparison
from worker.training.checkpoint import FORMAT, read, unpack
from worker.training.loop import prepare, probe_run
from worker.training.optim import base_config, lr_factor


@dataclass
class Site:
    """Where an analysis looks: a job's checkpoint (its step and tensors), the other kept checkpoints a trajectory,
    an interpolation or a comparison reads, by (job id, step), and the specs of the jobs they belong to."""

    job_id: int | None
    step: int
    tensors: dict[str, Tensor]
    kept: Mapping[tuple[int, int], Path] = field(default_factory=dict)
    specs: Mapping[int | None, JobSpec] = field(default_factory=dict)
    uploads: Callable[[str], Path] | None = None

    @property
    def weights(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.tensors.items() if "/" not in k}

    def other_end(self, to_job: int | None, to_step: int | None) -> tuple[int | None, int]:
        """Another job's latest checkpoint, or this job's at to_step."""
        if to_job:
            return to_job, max(s for j, s in self.kept if j == to_job)
        assert to_step is not None  # (the API fills it in)
        return self.job_id, to_step

    def model_at(self, at: tuple[int | None, int], device: torch.device, like: nn.Module) -> nn.Module:
        """The model of a kept checkpoint: a copy of `like` (this job's model) for this job's, else built from its
        job's spec (its data loaded for the shapes)."""
        tensors, _ = read(self.kept[at])
        model = copy.deepcopy(like) if at[0] == self.job_id else prepare(self.specs[at[0]], device, self.uploads).model
        model.load_state_dict({k: v for k, v in tensors.items() if "/" not in k})
        return model


@dataclass
class Analyzed:
    result: dict[str, Any]  # the document, as recorded
    artifacts: dict[str, tuple[dict[str, Tensor], dict[str, str]]]


@dataclass(frozen=True)
class Kind:
    """A kind of analysis: a measurement (`compute`) or a grid (`plan`, its points, its directions' artifact)."""

    request: type
    compute: Callable[[Any, Run, Site, Calls], Analyzed] | None = None
    points: Callable[[Any], int] = lambda _: 0  # a grid's points (0: not a grid, or an adaptive one)
    plan: Callable[[Any, Run, Site, Calls], GridPlan] | None = None
    directions: str | None = None  # the artifact kind of a grid's directions


def _hessian(request: HessianAnalysis, run: Run, site: Site, calls: Calls) -> Analyzed:
    output, _ = measure(request, run, site.step, calls)
    [(_, document)] = output.results
    return Analyzed(document.recorded(), output.artifacts)


def _representations(request: RepresentationsAnalysis, run: Run, site: Site, calls: Calls) -> Analyzed:
    to = site.other_end(request.to_job, request.to_step)
    x = sample(run, request.examples)
    parts = cka.batches(len(x), request.batch)
    calls.report(f"CKA of job {site.job_id} step {site.step} against job {to[0]} step {to[1]}")
    mine, widths = layer_grams(run.model, chosen_layers(run.model, request.layers, "layers"), x, parts, "layers")
    other = site.model_at(to, x.device, like=run.model)
    try:
        theirs, to_widths = layer_grams(other, chosen_layers(other, request.to_layers, "to_layers"), x, parts, "to_layers")
    except RuntimeError as exc:  # (a shape mismatch inside the other model's forward)
        raise ValueError(f"job {to[0]}'s model does not take job {site.job_id}'s inputs: {exc}") from exc
    document = RepresentationsComparison(
        start=Endpoint(job=site.job_id, step=site.step),
        end=Endpoint(job=to[0], step=to[1]),
        layers=list(mine),
        to_layers=list(theirs),
        features=list(widths.values()),
        to_features=list(to_widths.values()),
        examples=len(x),
        estimator=estimator(parts),
        matrix=[[None if math.isnan(v) else v for v in row] for row in cka.between(mine, theirs)],
    )
    return Analyzed(document.recorded(), {})


def _reader(path: Path) -> Callable[[str], Tensor]:
    def tensor(name: str) -> Tensor:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    return tensor


def _trajectory(request: TrajectoryAnalysis, run: Run, site: Site, calls: Calls) -> GridPlan:
    path = [(s, _reader(site.kept[(j, s)])) for j, s in sorted(site.kept) if j == site.job_id and s <= site.step]
    return plan_trajectory(request, run, path, calls)


def _interpolation(request: InterpolationAnalysis, run: Run, site: Site, calls: Calls) -> GridPlan:
    to = site.other_end(request.to_job, request.to_step)
    end, _ = read(site.kept[to])
    ends = (Endpoint(job=site.job_id, step=site.step), Endpoint(job=to[0], step=to[1]))
    return plan_interpolation(request, run, site.weights, {k: v for k, v in end.items() if "/" not in k}, ends)


ANALYSES: dict[str, Kind] = {
    "hessian": Kind(HessianAnalysis, compute=_hessian),
    "landscape": Kind(
        LandscapeAnalysis,
        points=lambda r: 0 if r.adaptive else r.resolution**r.dims,
        plan=lambda r, run, site, calls: plan_landscape(r, run),
        directions="landscape-directions",
    ),
    "trajectory": Kind(
        TrajectoryAnalysis, points=lambda r: 0 if r.adaptive else r.resolution**2, plan=_trajectory, directions="trajectory-directions"
    ),
    "interpolation": Kind(InterpolationAnalysis, points=lambda r: r.points + 2, plan=_interpolation, directions="interpolation-direction"),
    "representations": Kind(RepresentationsAnalysis, compute=_representations),
}


def run_at(
    spec: JobSpec,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    uploads: Callable[[str], Path] | None = None,
) -> Run:
    """The probes' view of the run at a checkpoint: its weights, and the lr (and Adam state) it had then."""
    prepared = prepare(spec, device, uploads)
    prepared.model.load_state_dict({k: v for k, v in tensors.items() if "/" not in k})
    if metadata.get("format") == FORMAT:
        prepared.optimizer.load_state_dict(unpack(tensors, metadata).optimizer)
    lr = base_config(spec.optimizer).lr * lr_factor(spec.train.schedule, min(step, spec.train.steps - 1), spec.train.steps)
    for group in prepared.optimizer.param_groups:
        group["lr"] = lr
    return probe_run(spec, prepared)


def plan(request: Any, run: Run, site: Site, calls: Calls | None = None) -> GridPlan:
    kind = ANALYSES[request.kind]
    assert kind.plan is not None, f"{request.kind} is not a grid"
    return kind.plan(request, run, site, calls or Calls())


def analyze(request: Any, run: Run, site: Site, calls: Calls | None = None) -> Analyzed:
    """The whole analysis in this process (it stops with ProbeStopped when `calls.should_stop` says so, and
    publishes partial grids while it runs)."""
    calls = calls or Calls()
    kind = ANALYSES[request.kind]
    if kind.compute is not None:
        return kind.compute(request, run, site, calls)
    grid = kind.plan(request, run, site, calls)
    document = run_plan(run, grid, calls)
    assert kind.directions is not None
    return Analyzed(document.recorded(), {kind.directions: grid.direction_tensors()})


def analyze_checkpoint(
    spec: JobSpec,
    request: Any,
    step: int,
    tensors: dict[str, Tensor],
    metadata: dict[str, str],
    device: torch.device,
    kept: Mapping[tuple[int, int], Path] | None = None,
    job_id: int | None = None,
    specs: Mapping[int | None, JobSpec] | None = None,
) -> Analyzed:
    """One analysis of one checkpoint, from its file's contents (what a test or a notebook calls)."""
    site = Site(job_id, step, tensors, kept or {}, {job_id: spec, **(specs or {})})
    return analyze(request, run_at(spec, step, tensors, metadata, device), site)
