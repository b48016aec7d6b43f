"""Loss surfaces on the fixed case "digits-landscape" (../shared/bench-cases/landscape): ours against the
anchors' evaluation loops, on the frozen weights and directions, one torch thread, in one process.

Anchors: `li_faithful` (the kit's single-process emulation of tomgoldstein/loss-landscape's loop: directions
read from HDF5 per point, batches of 128, the whole result file rewritten per point; loss and accuracy) and
the `loss-landscapes` package's `random_plane` (its own directions: timed only; loss only, so "ours loss
only" is its like-for-like). Ours: `PlaneEvaluator` + `loss_surface`, timed from
the frozen weights (set-up, batch-size tuning and precomputation included). Each method is checked against
the kit's float64 reference surface; rounds alternate so a slow spell of the machine hits every method alike.
"""

import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.hessian_cases import SHARED
from dynascope.analysis import landscape as ls
from worker.training.optim import make_loss

KIT = SHARED / "bench-cases" / "landscape"
ROUNDS = 2
LOSS = make_loss("cross_entropy", 10)  # what a job uses


def _kit():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(KIT))
    from lsbench import common, methods  # the shared kit's modules

    return common, methods


def ours(compile: bool = False, accuracy: bool = True) -> Callable:
    def run(model, dx, dy, xs, ys, x, y) -> np.ndarray:  # type: ignore[no-untyped-def]
        centre = ls.weights_of(model)
        with ls.PlaneEvaluator(model, LOSS, x, y, centre, [dx, dy], compile=compile, accuracy=accuracy).session() as ev:
            return ls.loss_surface(ev, xs.numpy(), ys.numpy()).loss

    return run


def ours_adaptive(model, dx, dy, xs, ys, x, y) -> np.ndarray:  # type: ignore[no-untyped-def]
    centre = ls.weights_of(model)
    with ls.PlaneEvaluator(model, LOSS, x, y, centre, [dx, dy]).session() as ev:
        surf = ls.adaptive_surface(ev, xs.numpy(), ys.numpy())
    ours_adaptive.fraction = float(surf.evaluated.mean())  # type: ignore[attr-defined]
    return surf.loss


def _case(model_name: str, grid: int, contenders: dict[str, Callable]) -> dict[str, dict]:
    common, _ = _kit()
    model, dx, dy = common.get_model_and_dirs(model_name)
    _, _, x, y = common.load_data(model_name, 1000)
    xs, ys = common.grid(grid)
    reference = np.load(KIT / "reference" / f"surface_{model_name}_g{grid}_e1000_-1_1.npy")
    small = common.grid(3)
    warm = {}
    for name, fn in contenders.items():  # warm-up: imports, allocator, compilation
        start = time.perf_counter()
        fn(model, dx, dy, *(common.grid(17) if fn is ours_adaptive else small), x, y)
        warm[name] = time.perf_counter() - start
    out: dict[str, dict] = {name: {"seconds": math.inf, "warm_up_s": warm[name]} for name in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            start = time.perf_counter()
            surf = np.asarray(fn(model, dx, dy, xs, ys, x, y), dtype=np.float64)
            seconds = time.perf_counter() - start
            entry = out[name]
            entry["seconds"] = min(entry["seconds"], seconds)
            entry["points_per_s"] = grid * grid / entry["seconds"]
            if name != "loss-landscapes":  # its own directions: its values are not comparable
                entry["max_abs_error"] = float(np.abs(surf - reference).max())
                entry["max_rel_error"] = float((np.abs(surf - reference) / reference).max())
    return out


def run() -> list[dict]:
    if not (KIT / "reference").is_dir():
        return [{"benchmark": "landscape", "case": "missing ../shared/bench-cases/landscape", "ours": "-", "anchor": "-", "ratio": "-"}]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, methods = _kit()
        anchors = {"loss-landscape loop": methods.li_faithful, "loss-landscapes": methods.ll_pkg}
        rows = []
        cases = [
            ("mlp", 51, {**anchors, "ours": ours(), "ours loss only": ours(accuracy=False), "ours adaptive": ours_adaptive}),
            ("cnn", 25, {**anchors, "ours": ours(), "ours compiled": ours(compile=True)}),
        ]
        for model_name, grid, contenders in cases:
            result = _case(model_name, grid, contenders)
            best_anchor = max(anchors, key=lambda a: result[a]["points_per_s"])
            a = result[best_anchor]
            for name in contenders:
                if name in anchors:
                    continue
                mine = result[name]
                extra = ""
                if name == "ours adaptive":
                    extra = f", {ours_adaptive.fraction:.1%} of the points, worst rel. error {mine['max_rel_error']:.1e}"  # type: ignore[attr-defined]
                elif name == "ours compiled":
                    extra = f", compile {mine['warm_up_s']:.0f}s once"
                rows.append(
                    {
                        "benchmark": "landscape",
                        "case": f"digits {model_name} {grid}×{grid}, 1,000 examples, 1 thread: {name}",
                        "ours": f"{mine['points_per_s']:.0f} pts/s, max|err| {mine['max_abs_error']:.1e}{extra}",
                        "anchor": f"{best_anchor} {a['points_per_s']:.0f} pts/s"
                        + (f" (err {a['max_abs_error']:.1e})" if "max_abs_error" in a else ""),
                        "ratio": f"{mine['points_per_s'] / a['points_per_s']:.2f}x",
                        "table": result,
                    }
                )
        return rows
    finally:
        torch.set_num_threads(threads)
