"""What the instability probe costs a training step when it reads the step's own forward, backward and update:
a server job's loop timed whole (training plus every probe hook: the capture's hooks run inside the step's own
forward, so the probe's own clock would miss them), with the probe at every step and at every 20th, against the
same job without it. The example's character transformer (2 layers, width 64, context 64, batch 32) and a wider
one (4 layers, width 128); AdamW; one torch thread; the median of `repeats` runs."""

import statistics

import torch

from backend.spec import JobSpec
from bench.probe_costs import Summary
from worker.training.loop import train

MODELS = {
    "char transformer 2×64, context 64, batch 32": {"layers": 2, "width": 64},
    "char transformer 4×128, context 64, batch 32": {"layers": 4, "width": 128},
}
STEPS = 100


def _seconds_per_step(model: dict, probes: dict) -> float:
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
    recorder = Summary()
    train(spec, recorder, torch.device("cpu"))
    return (recorder.summary["train_seconds"] + sum(recorder.summary["probe_seconds"].values())) / STEPS


def run(repeats: int = 3) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, model in MODELS.items():
        plain = statistics.median(_seconds_per_step(model, {}) for _ in range(repeats))
        for every in (1, 20):
            probed = statistics.median(_seconds_per_step(model, {"instability": {"every": every}}) for _ in range(repeats))
            rows.append(
                {
                    "benchmark": "instability_overhead",
                    "case": f"{name}: instability every {every} step{'s' if every > 1 else ''}",
                    "ours": f"{probed * 1e3:.1f} ms a step",
                    "anchor": f"without the probe: {plain * 1e3:.1f} ms",
                    "ratio": f"{(probed / plain - 1) * 100:+.1f} %",
                }
            )
    return rows
