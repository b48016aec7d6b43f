"""Grids of loss values: a surface or curve around the current weights (the landscape probe, or an analysis of a
kept checkpoint), the trajectory's principal plane, the line between two sets of weights. A plan is enough for
any worker to compute any part of a grid; each grid is published while it is computed."""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynascope.analysis import hessian as hs
from dynascope.analysis import landscape as ls
from dynascope.analysis.hvp import HessianOperator
from dynascope.probes.base import Calls, ProbeStopped, Run
from dynascope.probes.samples import stratified_rows
from dynascope.results import Endpoint, LandscapeResult
from dynascope.settings import InterpolationSettings, LandscapeSettings, TrajectorySettings

SAMPLE_SEED = 2  # the sample's rows: run seed + this
PUBLISH_SECONDS = 2.0  # how often a partial surface is published for the dashboard
# A grid whose eager estimate is longer compiles its forward first (a few seconds once; measured 1.25× on the
# benchmark CNN, channels-last eager → compiled, on a CPU).
COMPILE_AFTER_SECONDS = 60.0


def _hessian_plane(run: Run, x: Tensor, y: Tensor, names: list[str], seed: int) -> tuple[list[ls.Weights], list[float]]:
    op = HessianOperator(run.model, run.loss_fn, [(x, y)], mode="eval", seed=seed)
    top = hs.eigenpairs(op, op.n, 2, tol=1e-3, seed=seed, device=op.device)
    directions = []
    for k in range(2):
        d = dict(zip(op.names, op.split(top.vectors[:, k].to(op.dtype)), strict=True))
        directions.append({n: d[n].to(torch.float32) for n in names if n in d})
    return directions, [float(v) for v in top.values]


def _sample(run: Run, examples: int) -> tuple[Tensor, Tensor]:
    return stratified_rows(run, examples, run.seed + SAMPLE_SEED)


@dataclass
class GridPlan:
    """Everything a grid needs besides the model: its points, directions, centre and settings. The JSON part
    (`spec()`) and the directions (`direction_tensors()`) are enough for another worker to compute any chunk."""

    centre: ls.Weights
    directions: list[ls.Weights]
    xs: np.ndarray
    ys: np.ndarray | None
    meta: dict[str, Any]  # stored with the result: plane, sample size, batch-norm mode, seed, …

    @property
    def points(self) -> list[tuple[int, int]]:
        return ls.grid_order(len(self.xs), 1 if self.ys is None else len(self.ys))

    def evaluator(self, run: Run, points: int | None = None) -> ls.PlaneEvaluator:
        """Eager, or compiled when the grid would take long enough to repay the compilation."""
        x, y = _sample(run, self.meta["examples_asked"])
        make = partial(ls.PlaneEvaluator, run.model, run.loss_fn, x, y, self.centre, self.directions, batch_norm=self.meta["batch_norm"])
        eager = make()
        if (points or len(self.points)) * eager.seconds_per_point < COMPILE_AFTER_SECONDS:
            return eager
        eager.restore()
        try:
            return make(compile=True)
        except Exception:  # a model the compiler cannot take runs eagerly
            return make()

    def spec(self) -> dict[str, Any]:
        return {"xs": self.xs.tolist(), "ys": None if self.ys is None else self.ys.tolist(), "meta": self.meta}

    def direction_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {f"d{k + 1}/{n}": t.detach().float().cpu().contiguous() for k, d in enumerate(self.directions) for n, t in d.items()}
        return tensors, {k: json.dumps(v) for k, v in self.meta.items()}

    @classmethod
    def restore(cls, spec: dict[str, Any], tensors: dict[str, Tensor], centre: ls.Weights) -> "GridPlan":
        count = 1 + any(k.startswith("d2/") for k in tensors)
        directions = [{k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"d{i + 1}/")} for i in range(count)]
        ys = None if spec["ys"] is None else np.asarray(spec["ys"])
        return cls(centre, directions, np.asarray(spec["xs"]), ys, spec["meta"])

    def document(
        self, loss: np.ndarray, accuracy: np.ndarray | None, evaluated: np.ndarray, seconds: float, partial: bool
    ) -> LandscapeResult:
        """The result: loss[i][j] (a list for a curve), accuracy alike, and how far the grid has got."""
        one = self.ys is None
        done = int(evaluated.sum())
        rows = (lambda a: a[:, 0].tolist()) if one else (lambda a: a.tolist())
        return LandscapeResult.model_validate(
            {
                **{k: v for k, v in self.meta.items() if k != "examples_asked"},
                "dims": 1 if one else 2,
                "xs": self.xs.tolist(),
                "ys": None if one else self.ys.tolist(),
                "loss": rows(loss),
                "accuracy": None if accuracy is None else rows(accuracy),
                "points_done": done,
                "points_total": evaluated.size,
                "points_per_s": done / seconds if seconds > 0 else None,
                "evaluated": evaluated.astype(int).tolist() if self.meta.get("adaptive") else None,
                "partial": partial,
            }
        )


def run_plan(run: Run, plan: GridPlan, calls: Calls) -> LandscapeResult:
    """Compute the whole grid here, with progress, cancellation and partial results; the result document."""
    started = time.monotonic()
    last = [started]
    evaluator = plan.evaluator(run)
    adaptive = bool(plan.meta.get("adaptive"))

    def progress(points: list[tuple[int, int]], surf: ls.Surface) -> None:
        now = time.monotonic()
        done, total = int(surf.evaluated.sum()), surf.evaluated.size
        rate = done / max(now - started, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f} s" if not adaptive else ""
        calls.report(f"{plan.meta['plane']} landscape: {done}/{total} points, {rate:.0f} points/s{eta}")
        if calls.should_stop():
            raise ProbeStopped
        if now - last[0] >= PUBLISH_SECONDS:
            last[0] = now
            calls.publish(plan.document(surf.loss, surf.accuracy, surf.evaluated, now - started, partial=True))

    with evaluator.session():
        if adaptive:
            surf = ls.adaptive_surface(evaluator, plan.xs, plan.ys if plan.ys is not None else plan.xs, progress=progress)
        else:
            total = len(plan.points)
            surf = ls.loss_surface(evaluator, plan.xs, plan.ys, progress=progress, chunk=max(8, total // 100))
    out = plan.document(surf.loss, surf.accuracy, surf.evaluated, time.monotonic() - started, partial=False)
    out.batch_size = evaluator.batch_size
    return finish(plan, out)


def evaluate_points(run: Run, plan: GridPlan, points: list[tuple[int, int]], should_stop: Callable[[], bool]) -> list[list[float | None]]:
    """[i, j, loss, accuracy] at the given grid points (a chunk of a grid split across workers)."""
    out = []
    with plan.evaluator(run, len(points)).session() as evaluate:
        for i, j in points:
            value = evaluate((plan.xs[i],) if plan.ys is None else (plan.xs[i], plan.ys[j]))
            out.append([i, j, value.loss if math.isfinite(value.loss) else None, value.accuracy])
            if should_stop():
                raise ProbeStopped
    return out


def plan_landscape(cfg: LandscapeSettings, run: Run) -> GridPlan:
    """A surface or curve around the model's weights: a probe's, or an analysis of a kept checkpoint."""
    centre = ls.weights_of(run.model)
    count = cfg.dims
    eigenvalues: list[float] | None = None
    if cfg.plane == "hessian":
        x, y = _sample(run, cfg.examples)
        directions, eigenvalues = _hessian_plane(run, x, y, list(centre), run.seed)
        directions = directions[:count]
        span = cfg.span or (3.0 / math.sqrt(eigenvalues[0]) if eigenvalues[0] > 0 else 1.0)
    else:
        directions = ls.random_directions(centre, count, cfg.seed, cfg.normalization, cfg.include_bias_bn, cfg.orthogonalize)
        span = cfg.span or 1.0
    xs = ls.symmetric_grid(cfg.resolution, span)
    meta = {
        "plane": cfg.plane,
        "resolution": cfg.resolution,
        "span": span,
        "seed": cfg.seed,
        "normalization": cfg.normalization if cfg.plane == "random" else "unit eigenvectors",
        "include_bias_bn": cfg.include_bias_bn,
        "orthogonalize": cfg.orthogonalize,
        "examples": min(cfg.examples, len(run.y_train)),
        "examples_asked": cfg.examples,
        "batch_norm": cfg.batch_norm,
        "adaptive": cfg.adaptive,
        "eigenvalues": eigenvalues,
        "indexing": "loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)" if count == 2 else "loss[i] = L(θ + xs[i]·d1)",
    }
    return GridPlan(centre, directions, xs, xs if count == 2 else None, meta)


Reader = Callable[[str], Tensor]


def plan_trajectory(cfg: TrajectorySettings, run: Run, path: list[tuple[int, Reader]], calls: Calls) -> GridPlan:
    """The plane of the path's first two principal components, centred at the model's weights (the path's last
    checkpoint), and each checkpoint's place on that plane."""
    final = ls.weights_of(run.model)
    calls.report(f"trajectory: principal components of {len(path)} checkpoints")
    plane = ls.trajectory_pca([read for _, read in path], final.__getitem__, list(final))
    spans = [float(np.abs(plane.coords[:, k]).max()) * (1 + cfg.margin) or 1.0 for k in range(2)]
    xs, ys = (ls.symmetric_grid(cfg.resolution, span) for span in spans)
    meta = {
        "plane": "pca",
        "resolution": cfg.resolution,
        "span": spans[0],
        "span_y": spans[1],
        "examples": min(cfg.examples, len(run.y_train)),
        "examples_asked": cfg.examples,
        "batch_norm": cfg.batch_norm,
        "adaptive": cfg.adaptive,
        "explained_variance_ratio": plane.explained_variance_ratio.tolist(),
        "path": {"steps": [s for s, _ in path], "x": plane.coords[:, 0].tolist(), "y": plane.coords[:, 1].tolist()},
        "indexing": "loss[i][j] = L(θ_last + xs[i]·pc1 + ys[j]·pc2), pc1 and pc2 of unit length",
    }
    return GridPlan(final, plane.directions, xs, ys, meta)


def plan_interpolation(
    cfg: InterpolationSettings, run: Run, start: dict[str, Tensor], end: dict[str, Tensor], ends: tuple[Endpoint, Endpoint]
) -> GridPlan:
    """The line from `start` to `end` (float state: parameters and BatchNorm statistics)."""
    state = {k: v for k, v in run.model.state_dict().items() if v.is_floating_point()}
    if set(start) != set(end) or any(start[k].shape != end[k].shape for k in start):
        raise ValueError("the two checkpoints are of different models: their tensors' names or shapes differ")
    device = next(iter(state.values())).device
    a = {k: start[k].to(device=device, dtype=state[k].dtype) for k in state}
    b = {k: end[k].to(device=device, dtype=state[k].dtype) for k in state}
    lo, hi = cfg.range
    alphas = np.unique(np.concatenate([np.linspace(lo, hi, cfg.points), [0.0, 1.0]]))
    meta = {
        "plane": "interpolation",
        "resolution": len(alphas),
        "span": None,
        "examples": min(cfg.examples, len(run.y_train)),
        "examples_asked": cfg.examples,
        "batch_norm": cfg.batch_norm,
        "from": ends[0].model_dump(),
        "to": ends[1].model_dump(),
        "indexing": "loss[i] = L((1 − α_i)·θ_from + α_i·θ_to)",
    }
    return GridPlan(a, [ls.interpolation_directions(a, b)], alphas, None, meta)


def finish(plan: GridPlan, result: LandscapeResult) -> LandscapeResult:
    """What each kind adds to a finished grid's document: the loss at its centre (and at the line's far end)."""
    if plan.meta["plane"] == "interpolation":
        result.centre_loss = result.loss[int(np.flatnonzero(plan.xs == 0.0)[0])]
        result.end_loss = result.loss[int(np.flatnonzero(plan.xs == 1.0)[0])]
    else:
        middle = len(plan.xs) // 2
        result.centre_loss = result.loss[middle] if result.dims == 1 else result.loss[middle][middle]
    return result
