"""The signals probe's cost in a training run: full-batch GD (the probe set is the batch, so per-step loss
tracking reads the training step's own losses) on the planted-pair data, our loop with the probe against
the same loop without it, alternated, after one warm-up run (a process's first search pays ~0.25 s once for
torch.func's first JVP and SciPy's import); and the time of one search against a full-batch step.

The multiple is 1 + the probe's own clock per step / a step without it: on this machine whole runs of the
same code differ by ±15 % from one to the next, more than the probe costs, so their ratios (also reported)
say little about it."""

import statistics
import time

import torch

from backend.spec import JobSpec
from worker.training.loop import train

STEPS, ROUNDS = 300, 9


class _Quiet:
    """A recorder that keeps only what the benchmark reads."""

    def __init__(self) -> None:
        self.summary: dict = {}
        self.searches = 0

    def log(self, step, metrics) -> None:  # type: ignore[no-untyped-def]
        self.searches += "signals/outliers" in metrics

    def progress(self, step, total, stage) -> None:  # type: ignore[no-untyped-def]
        pass

    def should_stop(self) -> bool:
        return False

    def save_tensors(self, kind, step, tensors, metadata=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def result(self, kind, step, payload) -> None:  # type: ignore[no-untyped-def]
        if kind == "summary":
            self.summary = payload


def _spec(probe: dict | None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "bench-signals",
            "model": {"kind": "mlp", "widths": [64]},
            "data": {"kind": "opposing_features", "examples": 2000, "classes": 4, "strength": 6.0, "share": 0.5, "class_signal": 0.3},
            "optimizer": {"kind": "sgd", "lr": 0.12},
            "train": {"steps": STEPS, "batch_size": 100_000, "loss": "mse", "eval_every": STEPS, "checkpoint_every": None},
            "probes": {"signals": probe} if probe is not None else {},
        }
    )


VARIANTS = {"none": None, "tracking": {"detect_every": 10 * STEPS, "on_rise": False}, "searching": {"detect_every": 100}}


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_spec(VARIANTS["searching"]), _Quiet(), torch.device("cpu"))  # warm-up: a process's first JVP, SciPy
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in VARIANTS}  # seconds, probe clock, searches
        order = list(VARIANTS.items())
        for r in range(ROUNDS):
            for name, variant in order[r % len(order) :] + order[: r % len(order)]:  # each variant leads in turn
                recorder = _Quiet()
                start = time.perf_counter()
                train(_spec(variant), recorder, torch.device("cpu"))
                runs[name].append((time.perf_counter() - start, recorder.summary["probe_seconds"].get("signals", 0.0), recorder.searches))
        median = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
        least = {name: min(r[0] for r in rs) for name, rs in runs.items()}
        clock = {name: statistics.median(r[1] for r in rs) / STEPS for name, rs in runs.items()}
        step = median["none"] / STEPS
        searches = runs["searching"][0][2]
        per_search = (clock["searching"] - clock["tracking"]) * STEPS / max(searches, 1)
        return [
            {
                "benchmark": "signals",
                "case": f"planted pair, 1,600 examples, full-batch GD: per-step loss tracking, {STEPS} steps",
                "ours": f"the probe's own clock: {1e6 * clock['tracking']:.0f} µs a step (whole runs: {median['tracking']:.3f} s median, {least['tracking']:.3f} s least)",
                "anchor": f"a step without it: {1e6 * step:.0f} µs (whole runs: {median['none']:.3f} s median, {least['none']:.3f} s least)",
                "ratio": f"{1 + clock['tracking'] / step:.3f}x (whole runs: {median['tracking'] / median['none']:.2f}x median, {least['tracking'] / least['none']:.2f}x least)",
            },
            {
                "benchmark": "signals",
                "case": f"same, with {searches} searches",
                "ours": f"{median['searching']:.3f} s median",
                "anchor": f"{median['none']:.3f} s without",
                "ratio": f"{median['searching'] / median['none']:.2f}x",
            },
            {
                "benchmark": "signals",
                "case": "one search (outliers, their gradients, clustering, two JVPs per pair)",
                "ours": f"{1e3 * per_search:.1f} ms",
                "anchor": f"a full-batch step: {1e3 * step:.2f} ms",
                "ratio": f"{per_search / step:.1f} steps",
            },
        ]
    finally:
        torch.set_num_threads(threads)
