"""Peak memory and time of the Hessian's top eigenvalues and of a 2-D loss landscape on a model of ≥ 1M
parameters, against one batch's forward and backward.

- Hessian: every batch's graph kept (the operator before bounded memory: one graph for the whole sample); graphs
  recomputed per product a batch at a time; recomputed in pieces that fit a budget (`graph_budget_mb`).
- Landscape: the whole sample in one forward per point (what the batch-size tuner could pick before) against
  batches of at most `MAX_BATCH` examples, tuned.

A ResNet-20 of width 32 (1.08M parameters) on synthetic images; each case in a fresh process (the peak is its
resident-set high-water mark above its start; torch's own peak on a GPU). On this 2-core CPU the Hessian's sample
is 1,000 16×16 images in batches of 100 and the top 2 eigenvalues to 1e-2, and the landscape's 2,048 images on a
3×3 grid (the issue's 10,000 32×32 images: DYNASCOPE_BENCH_EXAMPLES=10000 DYNASCOPE_BENCH_SIZE=32 on a GPU)."""

import multiprocessing
import os
import time

import numpy as np
import torch
from torch.nn import functional as F

EXAMPLES = int(os.environ.get("DYNASCOPE_BENCH_EXAMPLES", "1000"))
SIZE = int(os.environ.get("DYNASCOPE_BENCH_SIZE", "16"))
BATCH, TOP_K, TOL, BUDGET_MB = 100, 2, 1e-2, 128
LANDSCAPE_EXAMPLES, GRID = 2 * EXAMPLES + 48, 3

ONE_BATCH = "one batch: forward and backward"
KEPT, BY_BATCH, BUDGETED = "kept: one graph of the whole sample", f"recomputed: batches of {BATCH}", f"recomputed within {BUDGET_MB} MiB"
WHOLE, STREAMED = "landscape: the whole sample in one forward", "landscape: streamed in tuned batches"


def _setup(examples: int = EXAMPLES) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from backend.spec import ResNetModel
    from worker.training.models import resnet

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = resnet(ResNetModel(kind="resnet", depth=20, width=32), (3, SIZE, SIZE), 10).to(device).eval()
    x = torch.randn(examples, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, 10, (examples,), device=device)
    return model, x, y


def _hessian(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    from dynascope.analysis.hessian import eigenpairs
    from dynascope.analysis.hvp import HessianOperator

    whole = name == KEPT
    batches = [(x, y)] if whole else [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, EXAMPLES, BATCH)]
    budget = BUDGET_MB * 2**20 if name == BUDGETED else float("inf")
    op = HessianOperator(model, F.cross_entropy, batches, graphs="keep" if whole else "recompute", budget=budget)
    top = eigenpairs(op, op.n, TOP_K, tol=TOL, seed=0, device=x.device, basis=op.dtype)
    return {"values": top.values.tolist(), "hvps": top.hvps, "products": op.describe()}


def _landscape(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    from dynascope.analysis import landscape as ls

    centre = ls.weights_of(model)
    directions = ls.random_directions(centre, 2, seed=0)
    grid = ls.symmetric_grid(GRID, 1.0)
    size = len(y) if name == WHOLE else None
    with ls.PlaneEvaluator(model, F.cross_entropy, x, y, centre, directions, batch_size=size).session() as ev:
        started = time.perf_counter()
        surface = ls.loss_surface(ev, grid, grid)
        per_point = (time.perf_counter() - started) / GRID**2
        return {"values": surface.loss.ravel().tolist(), "products": f"batches of {ev.batch_size}", "per_point": per_point}


def _case(name: str, out: multiprocessing.Queue) -> None:
    from dynascope.memory import Peak

    torch.set_num_threads(2)
    landscape = name in (WHOLE, STREAMED)
    model, x, y = _setup(LANDSCAPE_EXAMPLES if landscape else EXAMPLES)
    started = time.perf_counter()
    with Peak(x.device) as peak:
        if name == ONE_BATCH:
            F.cross_entropy(model(x[:BATCH]), y[:BATCH]).backward()
            result: dict = {}
        else:
            result = (_landscape if landscape else _hessian)(name, model, x, y)
    out.put(result | {"name": name, "seconds": time.perf_counter() - started, "peak": peak.bytes})


def _measure(name: str) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_case, args=(name, out))
    process.start()
    result = out.get()
    process.join()
    return result


def _rows(case: str, ours: dict, before: dict, one: dict, agree: float) -> list[dict]:
    label = f"{ours['name']} ({ours['products']})"
    return [
        {
            "benchmark": "bounded_memory",
            "case": f"{case}: peak memory, {label}",
            "ours": f"{ours['peak'] / 2**20:,.0f} MiB",
            "anchor": f"{before['name']}: {before['peak'] / 2**20:,.0f} MiB; {ONE_BATCH}: {one['peak'] / 2**20:,.0f} MiB",
            "ratio": f"{ours['peak'] / before['peak']:.2f}× before, {ours['peak'] / one['peak']:.2f}× one batch",
        },
        {
            "benchmark": "bounded_memory",
            "case": f"{case}: time, {label} (values agree to {agree:.1e})",
            "ours": f"{ours['seconds']:.1f} s" + (f" ({ours['hvps']} products)" if "hvps" in ours else ""),
            "anchor": f"{before['name']}: {before['seconds']:.1f} s",
            "ratio": f"{ours['seconds'] / before['seconds']:.2f}×",
        },
    ] + (
        [
            {
                "benchmark": "bounded_memory",
                "case": f"{case}: seconds per point of the grid (set-up and batch-size tuning left out)",
                "ours": f"{ours['per_point']:.2f} s",
                "anchor": f"{before['name']}: {before['per_point']:.2f} s",
                "ratio": f"{ours['per_point'] / before['per_point']:.2f}×",
            }
        ]
        if "per_point" in ours
        else []
    )


def _agreement(ours: dict, before: dict) -> float:
    a, b = np.array(ours["values"]), np.array(before["values"])
    return float(np.max(np.abs(a - b) / np.abs(b)))


def run() -> list[dict]:
    one = _measure(ONE_BATCH)
    params = sum(p.numel() for p in _setup(1)[0].parameters())
    model = f"ResNet-20 ×32 ({params / 1e6:.2f}M parameters)"
    rows = []
    kept = _measure(KEPT)
    for name in (BY_BATCH, BUDGETED):
        ours = _measure(name)
        rows += _rows(
            f"{model}, Hessian top-{TOP_K} to {TOL:g}, {EXAMPLES:,} images {SIZE}×{SIZE}", ours, kept, one, _agreement(ours, kept)
        )
    whole, streamed = _measure(WHOLE), _measure(STREAMED)
    case = f"{model}, {GRID}×{GRID} landscape, {LANDSCAPE_EXAMPLES:,} images {SIZE}×{SIZE}"
    return rows + _rows(case, streamed, whole, one, _agreement(streamed, whole))
