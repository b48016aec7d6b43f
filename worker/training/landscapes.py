"""Loss landscapes in a job: the probe (a surface or curve around the current weights) and the analyses of
kept checkpoints (the same around one, the trajectory's principal plane, the line between two); each is
published while it is computed."""

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.spec import InterpolationAnalysis, LandscapeProbe, TrajectoryAnalysis
from worker.analysis import hessian as hs
from worker.analysis import landscape as ls
from worker.analysis.hvp import HessianOperator
from worker.training.probes import ProbeContext, ProbeOutput, ProbeStopped

PUBLISH_SECONDS = 2.0  # how often a partial surface is published for the dashboard


def stratified_sample(y: Tensor, size: int, seed: int) -> Tensor:
    """Indices of a fixed sample of `size` rows keeping each class's share (largest remainders); plain random
    rows for regression targets. The same seed gives the same rows at every step."""
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    if size >= n:
        return torch.arange(n)
    if y.is_floating_point() or y.dim() > 1:
        return torch.randperm(n, generator=gen)[:size].sort().values
    labels = y.cpu()
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * size / n
    take = exact.floor().long()
    short = size - int(take.sum())
    take[torch.argsort(exact - take, descending=True)[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        rows = (labels == c).nonzero().squeeze(1)
        picked.append(rows[torch.randperm(len(rows), generator=gen)[:k]])
    return torch.cat(picked).sort().values


class LandscapeTracker:
    name = "landscape"

    def __init__(self, cfg: LandscapeProbe) -> None:
        self.schedule = self.cfg = cfg

    def __call__(self, step: int, ctx: ProbeContext) -> ProbeOutput:
        return landscape(self.cfg, step, ctx)


def _hessian_plane(ctx: ProbeContext, x: Tensor, y: Tensor, names: list[str], seed: int) -> tuple[list[ls.Weights], list[float]]:
    op = HessianOperator(ctx.model, ctx.loss_fn, [(x, y)], mode="eval", seed=seed)
    top = hs.eigenpairs(op, op.n, 2, tol=1e-3, seed=seed, device=op.device)
    directions = []
    for k in range(2):
        flat, start, d = top.vectors[:, k], 0, {}
        for name, shape in zip(op.names, op.shapes):
            size = math.prod(shape)
            d[name] = flat[start : start + size].reshape(shape).to(torch.float32)
            start += size
        directions.append({n: d[n] for n in names if n in d})
    return directions, [float(v) for v in top.values]


def _sample(ctx: ProbeContext, examples: int) -> tuple[Tensor, Tensor]:
    rows = stratified_sample(ctx.y_train, examples, ctx.seed + 2).to(ctx.x_train.device)
    return ctx.x_train[rows], ctx.y_train[rows]


def _grid(
    ctx: ProbeContext,
    evaluator: ls.PlaneEvaluator,
    xs: np.ndarray,
    ys: np.ndarray | None,
    meta: dict[str, Any],
    adaptive: bool = False,
) -> dict[str, Any]:
    """Compute the grid with progress, cancellation and partial results; the result document."""
    count = 1 if ys is None else 2
    total = len(xs) * (1 if ys is None else len(ys))
    started = time.monotonic()
    last = [started]

    def document(surf: ls.Surface) -> dict[str, Any]:
        done = int(surf.evaluated.sum())
        seconds = time.monotonic() - started
        out: dict[str, Any] = {**meta, "dims": count, "xs": surf.xs.tolist(), "points_done": done, "points_total": total}
        out["ys"] = surf.ys.tolist() if count == 2 else None
        out["loss"] = surf.loss.tolist() if count == 2 else surf.loss[:, 0].tolist()
        acc = surf.accuracy
        out["accuracy"] = None if acc is None else (acc.tolist() if count == 2 else acc[:, 0].tolist())
        out["points_per_s"] = done / seconds if seconds > 0 else None
        if adaptive:
            out["evaluated"] = surf.evaluated.astype(int).tolist()
        return out

    def progress(points: list[tuple[int, int]], surf: ls.Surface) -> None:
        now = time.monotonic()
        done = int(surf.evaluated.sum())
        rate = done / max(now - started, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f} s" if not adaptive else ""
        ctx.report(f"{meta['plane']} landscape: {done}/{total} points, {rate:.0f} points/s{eta}")
        if ctx.should_stop():
            raise ProbeStopped
        if now - last[0] >= PUBLISH_SECONDS:
            last[0] = now
            ctx.publish({**document(surf), "partial": True})

    with evaluator.session():
        if adaptive:
            surf = ls.adaptive_surface(evaluator, xs, ys if ys is not None else xs, progress=progress)
        else:
            surf = ls.loss_surface(evaluator, xs, ys, progress=progress, chunk=max(8, total // 100))
    return {**document(surf), "partial": False, "batch_size": evaluator.batch_size}


def _direction_tensors(directions: list[ls.Weights], meta: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors = {f"d{k + 1}/{n}": t.detach().float().cpu().contiguous() for k, d in enumerate(directions) for n, t in d.items()}
    return tensors, {k: json.dumps(v) for k, v in meta.items()}


def landscape(cfg: Any, step: int, ctx: ProbeContext) -> ProbeOutput:
    """`cfg` is a LandscapeProbe or a LandscapeAnalysis (the same settings)."""
    x, y = _sample(ctx, cfg.examples)
    centre = ls.weights_of(ctx.model)
    count = cfg.dims
    eigenvalues: list[float] | None = None
    if cfg.plane == "hessian":
        directions, eigenvalues = _hessian_plane(ctx, x, y, list(centre), ctx.seed)
        directions = directions[:count]
        span = cfg.span or (3.0 / math.sqrt(eigenvalues[0]) if eigenvalues[0] > 0 else 1.0)
    else:
        directions = ls.random_directions(
            centre, count, cfg.seed, cfg.normalization, cfg.include_bias_bn, cfg.orthogonalize
        )  # fmt: skip
        span = cfg.span or 1.0
    xs = ls.symmetric_grid(cfg.resolution, span)
    meta = {
        "plane": cfg.plane, "resolution": cfg.resolution, "span": span, "seed": cfg.seed,
        "normalization": cfg.normalization if cfg.plane == "random" else "unit eigenvectors",
        "include_bias_bn": cfg.include_bias_bn, "orthogonalize": cfg.orthogonalize, "examples": len(y),
        "batch_norm": cfg.batch_norm, "adaptive": cfg.adaptive, "eigenvalues": eigenvalues,
        "indexing": "loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)" if count == 2 else "loss[i] = L(θ + xs[i]·d1)",
    }  # fmt: skip
    evaluator = ls.PlaneEvaluator(ctx.model, ctx.loss_fn, x, y, centre, directions, batch_norm=cfg.batch_norm)
    result = _grid(ctx, evaluator, xs, xs if count == 2 else None, meta, cfg.adaptive)
    middle = cfg.resolution // 2
    result["centre_loss"] = result["loss"][middle][middle] if count == 2 else result["loss"][middle]
    metrics = {"landscape/centre_loss": result["centre_loss"]}
    finite = [v for v in np.asarray(result["loss"], dtype=float).ravel() if np.isfinite(v)]
    if finite:
        metrics["landscape/max_loss"] = max(finite)
    artifacts = {"landscape-directions": _direction_tensors(directions, meta)} if cfg.save_directions else {}
    return ProbeOutput(metrics, result, artifacts)


Reader = Callable[[str], Tensor]


def trajectory(cfg: TrajectoryAnalysis, ctx: ProbeContext, path: list[tuple[int, Reader]]) -> ProbeOutput:
    """The loss surface on the plane of the path's first two principal components, centred at the model's
    weights (the path's last checkpoint), and each checkpoint's place on that plane."""
    x, y = _sample(ctx, cfg.examples)
    final = ls.weights_of(ctx.model)
    names = list(final)
    ctx.report(f"trajectory: principal components of {len(path)} checkpoints")
    plane = ls.trajectory_pca([read for _, read in path], final.__getitem__, names)
    spans = [float(np.abs(plane.coords[:, k]).max()) * (1 + cfg.margin) or 1.0 for k in range(2)]
    xs, ys = (ls.symmetric_grid(cfg.resolution, span) for span in spans)
    ratio = plane.explained_variance_ratio.tolist()
    meta = {
        "plane": "pca", "resolution": cfg.resolution, "span": spans[0], "span_y": spans[1], "examples": len(y),
        "batch_norm": cfg.batch_norm, "adaptive": cfg.adaptive, "explained_variance_ratio": ratio,
        "path": {"steps": [s for s, _ in path], "x": plane.coords[:, 0].tolist(), "y": plane.coords[:, 1].tolist()},
        "indexing": "loss[i][j] = L(θ_last + xs[i]·pc1 + ys[j]·pc2), pc1 and pc2 of unit length",
    }  # fmt: skip
    evaluator = ls.PlaneEvaluator(ctx.model, ctx.loss_fn, x, y, final, plane.directions, batch_norm=cfg.batch_norm)
    result = _grid(ctx, evaluator, xs, ys, meta, cfg.adaptive)
    middle = cfg.resolution // 2
    result["centre_loss"] = result["loss"][middle][middle]
    return ProbeOutput({}, result, {"trajectory-directions": _direction_tensors(plane.directions, meta)})


def interpolation(
    cfg: InterpolationAnalysis, ctx: ProbeContext, start: dict[str, Tensor], end: dict[str, Tensor], ends: dict[str, Any]
) -> ProbeOutput:
    """Loss and accuracy on the line from `start` to `end` (float state: parameters and BatchNorm statistics)."""
    state = {k: v for k, v in ctx.model.state_dict().items() if v.is_floating_point()}
    if set(start) != set(end) or any(start[k].shape != end[k].shape for k in start):
        raise ValueError("the two checkpoints are of different models: their tensors' names or shapes differ")
    x, y = _sample(ctx, cfg.examples)
    device = next(iter(state.values())).device
    a = {k: start[k].to(device=device, dtype=state[k].dtype) for k in state}
    b = {k: end[k].to(device=device, dtype=state[k].dtype) for k in state}
    lo, hi = cfg.range
    alphas = np.unique(np.concatenate([np.linspace(lo, hi, cfg.points), [0.0, 1.0]]))
    meta = {
        "plane": "interpolation", "resolution": len(alphas), "span": None, "examples": len(y), "batch_norm": cfg.batch_norm,
        "from": ends["from"], "to": ends["to"], "indexing": "loss[i] = L((1 − α_i)·θ_from + α_i·θ_to)",
    }  # fmt: skip
    evaluator = ls.PlaneEvaluator(ctx.model, ctx.loss_fn, x, y, a, [ls.interpolation_directions(a, b)], batch_norm=cfg.batch_norm)
    result = _grid(ctx, evaluator, alphas, None, meta)
    result["centre_loss"] = result["loss"][int(np.flatnonzero(alphas == 0.0)[0])]
    result["end_loss"] = result["loss"][int(np.flatnonzero(alphas == 1.0)[0])]
    return ProbeOutput({}, result, {})
