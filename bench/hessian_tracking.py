"""Sharpness tracking during full-batch gradient descent: products per tracked step.

The fixed MLP case (tanh 64-64-64-10, digits, 1,500 examples) trained from its seed-0 initialization by
full-batch GD at lr 0.5 (2/lr = 4, which the sharpness reaches); λmax measured every 5 steps for 300 steps
by our Lanczos warm-started from the previous eigenvector, our Lanczos from a random start, and PyHessian's
top-1. The truth at each point is our Lanczos at tol 1e-10.
"""

import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from bench import hessian_cases
from bench.hessian_topk import pyhessian
from dynascope.analysis.hessian import eigenpairs
from dynascope.analysis.hvp import HessianOperator

LR, STEPS, EVERY, TOL = 0.5, 300, 5, 1e-3


def run() -> list[dict]:
    if not hessian_cases.available():
        return []
    torch.set_num_threads(1)
    _, x, y, _ = hessian_cases.load("mlp")
    torch.manual_seed(0)
    model = hessian_cases.MLP()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    methods = {"ours warm-started": [], "ours cold": [], "PyHessian top-1 defaults": []}
    seconds = {name: 0.0 for name in methods}
    errors = {name: [] for name in methods}
    previous = None
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            truth = eigenpairs(op := HessianOperator(model, F.cross_entropy, [(x, y)]), op.n, 1, tol=1e-10).values[0]
            for name in methods:
                start = time.perf_counter()
                if name == "PyHessian top-1 defaults":
                    values, hvps = pyhessian(1e-3)(model, x, y, None, step)
                    value = float(np.max(values))
                else:
                    op = HessianOperator(model, F.cross_entropy, [(x, y)])
                    v0 = previous if name == "ours warm-started" else None
                    result = eigenpairs(op, op.n, 1, tol=TOL, v0=v0, seed=step)
                    value, hvps = float(result.values[0]), result.hvps
                    if v0 is not None or previous is None:
                        previous = result.vectors[:, 0]
                seconds[name] += time.perf_counter() - start
                methods[name].append(hvps)
                errors[name].append(abs(value - truth) / abs(truth))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    mine = "ours warm-started"
    rows = []
    for name in methods:
        if name == mine:
            continue
        rows.append(
            {
                "benchmark": "hessian_tracking",
                "case": f"MLP GD lr {LR}: λmax every {EVERY} steps vs {name}",
                "ours": f"{statistics.mean(methods[mine]):.1f} HVPs/point, max err {max(errors[mine]):.1e}, {seconds[mine]:.2f}s",
                "anchor": f"{statistics.mean(methods[name]):.1f} HVPs/point, max err {max(errors[name]):.1e}, {seconds[name]:.2f}s",
                "ratio": f"{seconds[name] / seconds[mine]:.1f}x faster",
            }
        )
    return rows
