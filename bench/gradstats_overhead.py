"""Gradient statistics every step, as multiples of a plain SGD step: ours against Cockpit (economy and full),
on the fixed case of ../shared/bench-cases/gradstats (digits standardized, batch 128; MLP 64-320-240-10 and a
small CNN), one torch thread, methods interleaved round by round so a slow spell of the machine hits all.

Ours: the gradstats probe's work in a step — hooks over the forward, every first-order statistic from that
backward, the optimizer's step, update ratios and cosines (`ours`), and with the per-layer spectra and an
8-example histogram every step as well (`ours + details`, which the probe runs on a sparser schedule).
"""

import itertools
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.hessian_cases import SHARED
from dynascope.analysis import gradstats as gs

KIT = SHARED / "bench-cases" / "gradstats"
LR, ROUNDS, CALLS = 0.05, 6, 5


def _kit():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(KIT))
    import common  # the shared kit's fixed models and data

    return common


def _batches(common, name: str):  # type: ignore[no-untyped-def]
    x, y = common.load_data(flatten=name == "mlp")
    size = common.BATCH_SIZE
    return itertools.cycle([(x[i : i + size], y[i : i + size]) for i in range(0, len(x) - size + 1, size)])


def plain(common, name: str) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    model, it = common.make_model(name), _batches(common, name)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def ours(details: bool) -> Callable:
    def make(common, name: str) -> Callable[[], None]:  # type: ignore[no-untyped-def]
        model, it = common.make_model(name), _batches(common, name)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        history, noise = gs.StepHistory(model), gs.NoiseScaleEMA()
        sample = next(_batches(common, name))
        sample = (sample[0][:8], sample[1][:8])

        def step() -> None:
            x, y = next(it)
            opt.zero_grad(set_to_none=True)
            with gs.Tape(model) as tape:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            found = gs.statistics(float(loss.detach()), gs.moments(tape, F.cross_entropy, x, y))
            found.as_metrics(LR)
            noise.update(found.grad_sq_unbiased, found.trace_sigma)
            history.before_step()
            if details:
                gs.layer_spectra(tape)
                gs.sampled_histogram(model, F.cross_entropy, *sample, 200_000, 0)
            opt.step()
            history.after_step()

        return step

    return make


def with_cockpit(config: str) -> Callable:
    def make(common, name: str) -> Callable[[], None]:  # type: ignore[no-untyped-def]
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration

        model, it = extend(common.make_model(name)), _batches(common, name)
        loss_fn, each = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        cp = Cockpit(model.parameters(), quantities=configuration(config))
        count = itertools.count()

        def step() -> None:
            x, y = next(it)
            k = next(count)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            with cp(k, info={"batch_size": len(x), "individual_losses": each(out, y), "loss": loss, "optimizer": opt}):
                loss.backward(create_graph=cp.create_graph(k))
            opt.step()

        return step

    return make


def run() -> list[dict]:
    if not (KIT / "common.py").exists():
        return [{"benchmark": "gradstats", "case": "missing ../shared/bench-cases/gradstats", "ours": "-", "anchor": "-", "ratio": "-"}]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        common = _kit()
        methods = {"plain step": plain, "ours": ours(False), "ours + details": ours(True)}
        try:
            import cockpit  # noqa: F401

            methods |= {"Cockpit economy": with_cockpit("economy"), "Cockpit full": with_cockpit("full")}
        except ImportError:
            pass
        rows = []
        for name in ("mlp", "cnn"):
            steps = {label: make(common, name) for label, make in methods.items()}
            for step in steps.values():  # warm-up
                for _ in range(3):
                    step()
            times: dict[str, list[float]] = {label: [] for label in steps}
            for _ in range(ROUNDS):
                for label, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(CALLS):
                        step()
                    times[label].append((time.perf_counter() - start) / CALLS)
            base = statistics.median(times["plain step"])
            multiple = {label: statistics.median(t) / base for label, t in times.items()}
            for label in ("ours", "ours + details"):
                for anchor in [a for a in multiple if a.startswith("Cockpit")] or ["plain step"]:
                    rows.append(
                        {
                            "benchmark": "gradstats",
                            "case": f"{name}, batch 128, 1 thread: {label} vs {anchor} (every step)",
                            "ours": f"{multiple[label]:.2f}× a plain step ({1e3 * base * multiple[label]:.1f} ms)",
                            "anchor": f"{multiple[anchor]:.1f}× a plain step",
                            "ratio": f"{multiple[anchor] / multiple[label]:.1f}x cheaper",
                            "table": {k: {"ms": 1e3 * statistics.median(v), "multiple": multiple[k]} for k, v in times.items()},
                        }
                    )
        return rows
    finally:
        torch.set_num_threads(threads)
