"""Probes: registered analyses the training loop runs on their schedules.

A probe sees the model and data through a ProbeContext and returns metrics (drawn as series) and a result
document; it never changes the model. The loop times each call.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from backend.spec import HessianProbe, Schedule
from worker.analysis import hessian as hs
from worker.analysis.hvp import GaussNewtonOperator, HessianOperator

@dataclass
class ProbeContext:
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x_train: Tensor
    y_train: Tensor
    n_classes: int
    seed: int
    threshold: Callable[[], tuple[float, str]]  # the stability threshold now, and its rule
    preconditioner: Callable[[], Tensor | None]  # Adam's diagonal P now (None for SGD, or before Adam's 1st step)
    adaptive: bool = False  # Adam: the threshold applies to λmax(P⁻¹H), not λmax(H)
    # Long probes report progress and stop when asked (ProbeStopped), between two products.
    report: Callable[[str], None] = lambda _: None
    should_stop: Callable[[], bool] = lambda: False
    # A probe may publish a partial result while it runs (the dashboard draws it); the final one replaces it.
    publish: Callable[[dict[str, Any]], None] = lambda _: None


class ProbeStopped(Exception):
    """The job was cancelled (or taken away) in the middle of a probe."""


def _ticker(ctx: ProbeContext, what: str) -> Callable[[int, int], None]:
    last = [0.0]

    def tick(done: int, budget: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            ctx.report(f"{what}: {done}/{budget} Hessian-vector products")
            if ctx.should_stop():
                raise ProbeStopped

    return tick


@dataclass
class ProbeOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    # kind -> (tensors, metadata), saved as safetensors artifacts
    artifacts: dict[str, tuple[dict[str, Tensor], dict[str, str]]] = field(default_factory=dict)


class Probe(Protocol):
    name: str
    schedule: Schedule

    def __call__(self, step: int, ctx: ProbeContext) -> ProbeOutput: ...


def _fixed_sample(ctx: ProbeContext, size: int, seed: int) -> tuple[Tensor, Tensor]:
    n = len(ctx.y_train)
    if size >= n:
        return ctx.x_train, ctx.y_train
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].to(ctx.x_train.device)
    return ctx.x_train[idx], ctx.y_train[idx]


class HessianTracker:
    """Top-k (and most negative) eigenvalues, optionally trace, density and layer blocks, at each due step.

    Each call starts Lanczos from the previous call's top eigenvectors, so tracking λmax through training
    costs a few products per point instead of a cold start.
    """

    name = "hessian"

    def __init__(self, cfg: HessianProbe) -> None:
        self.schedule = self.cfg = cfg
        self.previous: Tensor | None = None  # the top eigenvectors of the last call, as columns
        self.last_step: int | None = None
        self.latest_sharpness: tuple[int, float, float] | None = None  # (step, sharpness, its stability threshold)

    def __call__(self, step: int, ctx: ProbeContext) -> ProbeOutput:
        cfg = self.cfg
        x, y = _fixed_sample(ctx, cfg.examples, ctx.seed + 1)
        op = HessianOperator(ctx.model, ctx.loss_fn, [(x, y)], mode=cfg.mode, seed=ctx.seed)
        v0 = self.previous.sum(dim=1) if self.previous is not None else None
        top = hs.eigenpairs(
            op, op.n, cfg.top_k, tol=cfg.tol, v0=v0, seed=ctx.seed + step, device=op.device,
            progress=_ticker(ctx, f"hessian top-{cfg.top_k}"),
        )  # fmt: skip
        self.previous, self.last_step = top.vectors, step
        threshold, rule = ctx.threshold()
        metrics = {f"hessian/lambda_{i + 1}": float(v) for i, v in enumerate(top.values)}
        if not ctx.adaptive:
            metrics["hessian/sharpness"] = float(top.values[0])
        metrics["hessian/threshold"] = threshold
        metrics["hessian/hvps"] = float(top.hvps)
        result: dict[str, Any] = {
            "eigenvalues": top.values.tolist(),
            "residuals": top.residuals.tolist(),
            "converged": bool(top.converged),
            "hvps_top": top.hvps,
            "threshold": threshold,
            "threshold_rule": rule,
            "examples": len(y),
            "mode": cfg.mode,
            "loss": op.loss,
            "parameters": op.n,
            "n_classes": ctx.n_classes,
        }
        precond = ctx.preconditioner()
        if precond is not None:
            # λmax(P⁻¹H) = λmax(D H D) with D = P^(-1/2): a symmetric operator, so Lanczos applies.
            d = precond.rsqrt().to(op.device)
            pre = hs.eigenpairs(lambda v: d * op(d * v), op.n, 1, tol=cfg.tol, seed=ctx.seed + step, device=op.device)
            metrics["hessian/sharpness"] = float(pre.values[0])
            result["preconditioned_sharpness"] = float(pre.values[0])
        if "hessian/sharpness" in metrics:  # (Adam's first step has no preconditioner, so no sharpness to compare)
            self.latest_sharpness = (step, metrics["hessian/sharpness"], threshold)
        if cfg.negative:
            bottom = hs.eigenpairs(op, op.n, cfg.negative, which="SA", tol=cfg.tol, seed=ctx.seed, device=op.device)
            result["negative_eigenvalues"] = bottom.values.tolist()
            result["negative_residuals"] = bottom.residuals.tolist()
            metrics["hessian/lambda_min"] = float(bottom.values[0])
        if cfg.trace:
            trace = hs.hutchpp_trace(op, op.n, seed=ctx.seed, device=op.device)
            result["trace"] = {"value": trace.value, "stderr": trace.stderr, "method": trace.method, "hvps": trace.hvps}
            metrics["hessian/trace"] = trace.value
        if cfg.density:
            density = hs.spectral_density(
                op, op.n, probes=cfg.density_probes, steps=cfg.density_steps, seed=ctx.seed, device=op.device,
                progress=_ticker(ctx, "hessian density"),
            )  # fmt: skip
            edge = hs.bulk_edge(density, op.n)
            result["density"] = {
                "grid": density.grid.tolist(),
                "density": density.density.tolist(),
                "sigma": density.sigma,
                "probes": cfg.density_probes,
                "steps": cfg.density_steps,
                "bulk_edge": edge,
                "outliers": round(hs.count_beyond(density, op.n, edge)),
                "top_k_beyond_edge": int(np.sum(top.values > edge)),
                "moments": {k: list(v) for k, v in density.moments.items()},
            }
            metrics["hessian/outliers"] = float(result["density"]["outliers"])
        if cfg.gauss_newton:
            gn = GaussNewtonOperator(op, ctx.model, ctx.loss_fn, [(x, y)], seed=ctx.seed)
            result["gauss_newton_fraction"] = [
                float(top.vectors[:, i] @ gn(top.vectors[:, i])) / float(top.values[i]) for i in range(len(top.values))
            ]
        if cfg.layerwise:
            result["layerwise_lambda_max"] = hs.layerwise_top_eigenvalues(ctx.model, ctx.loss_fn, [(x, y)], tol=cfg.tol, mode=cfg.mode)
        result["hvps"] = op.hvps
        artifacts = {}
        if cfg.save_eigenvectors:
            vectors = {"eigenvalues": torch.tensor(top.values, dtype=torch.float32),
                       "eigenvectors": top.vectors.T.float().cpu().contiguous()}  # fmt: skip
            layout = {"parameters": json.dumps(op.names), "shapes": json.dumps([list(s) for s in op.shapes])}
            artifacts["hessian-eigenvectors"] = (vectors, {**layout, "mode": cfg.mode, "examples": str(len(y))})
        return ProbeOutput(metrics, result, artifacts)
