"""The landscape probe: a loss surface (or curve) around the current weights, drawn while it is computed."""

import json
import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.spec import LandscapeProbe
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


def landscape(cfg: Any, step: int, ctx: ProbeContext) -> ProbeOutput:
    """`cfg` is a LandscapeProbe or a LandscapeAnalysis (the same settings)."""
    model = ctx.model
    rows = stratified_sample(ctx.y_train, cfg.examples, ctx.seed + 2).to(ctx.x_train.device)
    x, y = ctx.x_train[rows], ctx.y_train[rows]
    centre = ls.weights_of(model)
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
    ys = xs if count == 2 else None
    total = cfg.resolution ** count
    started = time.monotonic()
    last = [started]
    meta = {
        "plane": cfg.plane, "dims": count, "resolution": cfg.resolution, "span": span, "seed": cfg.seed,
        "normalization": cfg.normalization if cfg.plane == "random" else "unit eigenvectors",
        "include_bias_bn": cfg.include_bias_bn, "orthogonalize": cfg.orthogonalize, "examples": len(y),
        "batch_norm": cfg.batch_norm, "adaptive": cfg.adaptive, "eigenvalues": eigenvalues,
        "indexing": "loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)" if count == 2 else "loss[i] = L(θ + xs[i]·d1)",
    }  # fmt: skip

    def document(surf: ls.Surface, done: int) -> dict[str, Any]:
        seconds = time.monotonic() - started
        out: dict[str, Any] = {**meta, "xs": surf.xs.tolist(), "points_done": done, "points_total": total}
        out["ys"] = surf.ys.tolist() if count == 2 else None
        out["loss"] = surf.loss.tolist() if count == 2 else surf.loss[:, 0].tolist()
        acc = surf.accuracy
        out["accuracy"] = None if acc is None else (acc.tolist() if count == 2 else acc[:, 0].tolist())
        out["points_per_s"] = done / seconds if seconds > 0 else None
        if cfg.adaptive:
            out["evaluated"] = surf.evaluated.astype(int).tolist()
        return out

    def progress(points: list[tuple[int, int]], surf: ls.Surface) -> None:
        now = time.monotonic()
        done = int(surf.evaluated.sum())
        rate = done / max(now - started, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f} s" if not cfg.adaptive else ""
        ctx.report(f"landscape: {done}/{total} points, {rate:.0f} points/s{eta}")
        if ctx.should_stop():
            raise ProbeStopped
        if now - last[0] >= PUBLISH_SECONDS:
            last[0] = now
            ctx.publish({**document(surf, done), "partial": True})

    evaluator = ls.PlaneEvaluator(model, ctx.loss_fn, x, y, centre, directions, batch_norm=cfg.batch_norm)
    with evaluator.session():
        if cfg.adaptive:
            surf = ls.adaptive_surface(evaluator, xs, xs, progress=progress)
        else:
            surf = ls.loss_surface(evaluator, xs, ys, progress=progress, chunk=max(8, total // 100))
    done = int(surf.evaluated.sum())
    result = {**document(surf, done), "partial": False, "batch_size": evaluator.batch_size}
    centre_index = (cfg.resolution // 2, cfg.resolution // 2 if count == 2 else 0)
    result["centre_loss"] = float(surf.loss[centre_index])
    metrics = {"landscape/centre_loss": result["centre_loss"]}
    finite = surf.loss[np.isfinite(surf.loss)]
    if finite.size:
        metrics["landscape/max_loss"] = float(finite.max())
    artifacts = {}
    if cfg.save_directions:
        tensors = {f"d{k + 1}/{n}": t.detach().cpu().contiguous() for k, d in enumerate(directions) for n, t in d.items()}
        artifacts["landscape-directions"] = (tensors, {k: json.dumps(v) for k, v in meta.items()})
    return ProbeOutput(metrics, result, artifacts)
