"""The Hessian probe: top-k (and most negative) eigenvalues, optionally trace, density and layer blocks, at each
due step, on a fixed sample of the training set; and the sharpness against the stability threshold."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dynascope.analysis import hessian as hs
from dynascope.analysis.hvp import GaussNewtonOperator, HessianOperator
from dynascope.probes.base import Calls, Output, Probe, ProbeStopped, Run
from dynascope.probes.samples import random_rows
from dynascope.results import Density, HessianResult, Trace
from dynascope.settings import HessianProbe, HessianSettings

SAMPLE_SEED = 1  # the sample's rows: run seed + this


@dataclass(frozen=True)
class Sharpness:
    """The Hessian probe's latest measurement, on the blackboard: its step, top eigenvector (flattened over the
    parameters), the sharpness (λmax(H), or λmax(P⁻¹H) under Adam) and its stability threshold. Under Adam's first
    step there is no preconditioner yet, so no sharpness to compare: `value` is None."""

    step: int
    top_eigenvector: Tensor
    value: float | None
    threshold: float


def ticker(calls: Calls, what: str) -> Callable[[int, int], None]:
    """Progress every half second of a Lanczos-style loop, and a stop there when asked."""
    last = [0.0]

    def tick(done: int, budget: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            calls.report(f"{what}: {done}/{budget} Hessian-vector products")
            if calls.should_stop():
                raise ProbeStopped

    return tick


def measure(cfg: HessianSettings, run: Run, step: int, calls: Calls, previous: Tensor | None = None) -> tuple[Output, Tensor]:
    """One measurement at the model's current weights (the probe's, or an analysis of a kept checkpoint); also the
    top eigenvectors (as columns) to start the next one from."""
    x, y = random_rows(run, cfg.examples, run.seed + SAMPLE_SEED)
    size = cfg.batch or len(y)
    batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
    op = HessianOperator(
        run.model, run.loss_fn, batches, mode=cfg.mode, seed=run.seed, graphs=cfg.graphs, budget=cfg.graph_budget_mb * 2**20
    )
    v0 = previous.sum(dim=1) if previous is not None else None
    progress = ticker(calls, f"hessian top-{cfg.top_k}")
    top = hs.eigenpairs(op, op.n, cfg.top_k, tol=cfg.tol, v0=v0, seed=run.seed + step, device=op.device, progress=progress, basis=op.dtype)
    threshold, rule = run.threshold()
    metrics = {f"hessian/lambda_{i + 1}": float(v) for i, v in enumerate(top.values)}
    metrics |= {"hessian/threshold": threshold, "hessian/hvps": float(top.hvps)}
    sharpness = None if run.adaptive else float(top.values[0])
    result = HessianResult(
        eigenvalues=top.values.tolist(),
        residuals=top.residuals.tolist(),
        converged=bool(top.converged),
        hvps_top=top.hvps,
        threshold=threshold,
        threshold_rule=rule,
        examples=len(y),
        mode=cfg.mode,
        loss=op.loss,
        parameters=op.n,
        n_classes=run.n_classes,
        hvps=0,
        products=op.describe(),
    )
    precond = run.preconditioner()
    if precond is not None:
        # λmax(P⁻¹H) = λmax(D H D) with D = P^(-1/2): a symmetric operator, so Lanczos applies.
        d = precond.rsqrt().to(op.device)
        pre = hs.eigenpairs(lambda v: d * op(d * v), op.n, 1, tol=cfg.tol, seed=run.seed + step, device=op.device, basis=op.dtype)
        sharpness = result.preconditioned_sharpness = float(pre.values[0])
    if sharpness is not None:
        metrics["hessian/sharpness"] = sharpness
    run.board.publish(Sharpness(step, top.vectors[:, 0], sharpness, threshold))
    if cfg.negative:
        bottom = hs.eigenpairs(op, op.n, cfg.negative, which="SA", tol=cfg.tol, seed=run.seed, device=op.device, basis=op.dtype)
        result.negative_eigenvalues, result.negative_residuals = bottom.values.tolist(), bottom.residuals.tolist()
        metrics["hessian/lambda_min"] = float(bottom.values[0])
    if cfg.trace:
        trace = hs.hutchpp_trace(op, op.n, seed=run.seed, device=op.device)
        result.trace = Trace(value=trace.value, stderr=trace.stderr, method=trace.method, hvps=trace.hvps)
        metrics["hessian/trace"] = trace.value
    if cfg.density:
        result.density = _density(cfg, op, top.values, ticker(calls, "hessian density"), run.seed)
        metrics["hessian/outliers"] = float(result.density.outliers)
    if cfg.gauss_newton:
        gn = GaussNewtonOperator(op, run.model, run.loss_fn, batches, seed=run.seed)
        vectors = [top.vectors[:, i] for i in range(len(top.values))]
        result.gauss_newton_fraction = [float(v @ gn(v)) / float(value) for v, value in zip(vectors, top.values, strict=True)]
    if cfg.layerwise:
        result.layerwise_lambda_max = hs.layerwise_top_eigenvalues(run.model, run.loss_fn, batches, tol=cfg.tol, mode=cfg.mode)
    result.hvps = op.hvps
    artifacts = {}
    if cfg.save_eigenvectors:
        vectors = {"eigenvalues": torch.tensor(top.values, dtype=torch.float32), "eigenvectors": top.vectors.T.float().cpu().contiguous()}
        layout = {"parameters": json.dumps(op.names), "shapes": json.dumps([list(s) for s in op.shapes])}
        artifacts["hessian-eigenvectors"] = (vectors, {**layout, "mode": cfg.mode, "examples": str(len(y))})
    return Output(metrics, [(step, result)], artifacts), top.vectors


def _density(cfg: HessianSettings, op: HessianOperator, top: np.ndarray, progress: Callable[[int, int], None], seed: int) -> Density:
    density = hs.spectral_density(
        op, op.n, probes=cfg.density_probes, steps=cfg.density_steps, seed=seed, device=op.device, progress=progress
    )
    edge = hs.bulk_edge(density, op.n)
    return Density(
        grid=density.grid.tolist(),
        density=density.density.tolist(),
        sigma=density.sigma,
        probes=cfg.density_probes,
        steps=cfg.density_steps,
        bulk_edge=edge,
        outliers=round(hs.count_beyond(density, op.n, edge)),
        top_k_beyond_edge=int(np.sum(top > edge)),
        moments={k: list(v) for k, v in density.moments.items()},
    )


class HessianTracker(Probe):
    """Each call starts Lanczos from the previous call's top eigenvectors, so tracking λmax through training costs
    a few products per point instead of a cold start."""

    name = "hessian"
    Settings = HessianProbe

    def __init__(self, cfg: HessianProbe, run: Run) -> None:
        super().__init__(cfg, run)
        self.previous: Tensor | None = None

    def before_step(self, step: int, calls: Calls) -> Output:
        output, self.previous = measure(self.cfg, self.run, step, calls, self.previous)
        return output
