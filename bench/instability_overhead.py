"""What the instability probe costs a training step when it reads the step's own forward, backward and update.

A server job's step (worker.training.loop.Training.step: the forward with the probe's hooks in it, backward,
update, and every probe hook) is timed whole, for the same job with and without the probe, the two runs' steps
interleaved one by one so that the machine's drift falls on both alike: the median step with the probe at every
step (the cost of a probed step), and the mean step with it at every 20th (what a run pays). The example's
character transformer (2 layers, width 64, context 64, batch 32) and a wider one (4 layers, width 128); AdamW;
one torch thread."""

import statistics
import time

import torch

from backend.spec import JobSpec
from bench.probe_costs import Summary
from worker.training.loop import Training

MODELS = {
    "char transformer 2×64, context 64, batch 32": {"layers": 2, "width": 64},
    "char transformer 4×128, context 64, batch 32": {"layers": 4, "width": 128},
}
STEPS = 200


def _training(model: dict, probes: dict) -> Training:
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "model": {"kind": "transformer", "heads": 4, "context": 64, **model},
            "data": {"kind": "text"},
            "optimizer": {"kind": "adamw", "lr": 0.01},
            "train": {"steps": STEPS, "batch_size": 32, "eval_every": 10 * STEPS, "checkpoint_every": None},
            "probes": probes,
        }
    )
    return Training(spec, Summary(), torch.device("cpu"), None, None)


def _interleaved(model: dict, every: int) -> tuple[list[float], list[float]]:
    """Seconds of each step, without and with the probe."""
    runs = [_training(model, {}), _training(model, {"instability": {"every": every}})]
    times: list[list[float]] = [[], []]
    for step in range(STEPS):
        for i in (0, 1) if step % 2 else (1, 0):
            started = time.perf_counter()
            runs[i].step(step)
            times[i].append(time.perf_counter() - started)
    return times[0], times[1]


def run() -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, model in MODELS.items():
        for every, summary, label in ((1, statistics.median, "median step"), (20, statistics.fmean, "mean step")):
            plain, probed = (summary(t) for t in _interleaved(model, every))
            rows.append(
                {
                    "benchmark": "instability_overhead",
                    "case": f"{name}: instability every {every} step{'s' if every > 1 else ''} ({label}, {STEPS} interleaved)",
                    "ours": f"{probed * 1e3:.2f} ms a step",
                    "anchor": f"without the probe: {plain * 1e3:.2f} ms",
                    "ratio": f"{(probed / plain - 1) * 100:+.1f} %",
                }
            )
    return rows
