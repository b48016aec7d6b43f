"""What the representation probes cost against a training step, in a server job's loop: the probe's own clock
(every hook timed by the runner, kept in the job's summary) per measurement, over the job's training time per
step. A digits MLP 64-128-128-10 at batch 128 and a CNN 16-32 at batch 128 (collapse, representations, kernel),
and a depth-3 linear network on a linear teacher, full batch (modes); one torch thread, each probe every 20
steps; the median of `repeats` runs."""

import statistics

import torch

from backend.spec import JobSpec
from worker.training.loop import train

DIGITS = {"data": {"kind": "digits"}, "lr": 0.1, "train": {"batch_size": 128}}
MODELS = {
    "MLP 64-128-128-10 on digits, batch 128": {"model": {"kind": "mlp", "widths": [128, 128]}, **DIGITS},
    "CNN 16-32 on digits, batch 128": {"model": {"kind": "cnn", "channels": [16, 32]}, **DIGITS},
}
PROBES = {
    "collapse (1,000 examples, train and validation)": {"collapse": {"every": 20, "examples": 1000}},
    "representations (256 examples, full)": {"representations": {"every": 20, "examples": 256}},
    "representations (1,024 examples, minibatch of 256)": {"representations": {"every": 20, "examples": 1024, "batch": 256}},
    "kernel (64 examples, Jacobian rows)": {"kernel": {"every": 20, "examples": 64, "route": "rows"}},
    "kernel (64 examples, Jacobian–vector products)": {"kernel": {"every": 20, "examples": 64, "route": "products"}},
}
DEEP_LINEAR = {
    "model": {"kind": "linear", "depth": 3, "width": 64},
    "data": {"kind": "linear_teacher", "dim": 32, "outputs": 16, "singular_values": [4, 3, 2, 1], "examples": 2000},
    "lr": 0.01,
    "train": {"batch_size": 100_000, "loss": "mse"},
}
CASES = [(model, setup, probe, probes) for model, setup in MODELS.items() for probe, probes in PROBES.items()] + [
    (
        "depth-3 linear 32-64-64-16 on a linear teacher, full batch (1,600 examples)",
        DEEP_LINEAR,
        "modes (4 modes)",
        {"modes": {"every": 20}},
    ),
]
STEPS = 200


class Summary:
    """A recorder that keeps only the job's summary."""

    def __init__(self) -> None:
        self.summary: dict = {}

    def log(self, step, metrics):  # noqa: ANN001, ANN201
        pass

    def progress(self, step, total, stage):  # noqa: ANN001, ANN201
        pass

    def should_stop(self) -> bool:
        return False

    def save_tensors(self, kind, step, tensors, metadata=None):  # noqa: ANN001, ANN201
        pass

    def result(self, kind, step, payload):  # noqa: ANN001, ANN201
        if kind == "summary":
            self.summary = payload


def _cost(setup: dict, probes: dict) -> tuple[float, float]:
    """(seconds per measurement, training seconds per step)."""
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "model": setup["model"],
            "data": setup["data"],
            "optimizer": {"kind": "sgd", "lr": setup["lr"]},
            "train": {"steps": STEPS, "seed": 0, "eval_every": STEPS, "checkpoint_every": None, **setup["train"]},
            "probes": probes,
        }
    )
    recorder = Summary()
    train(spec, recorder, torch.device("cpu"))
    [(name, seconds)] = recorder.summary["probe_seconds"].items()
    measurements = STEPS // 20 + 1  # (steps 0, 20, …, STEPS: `end` too)
    return seconds / measurements, recorder.summary["train_seconds"] / STEPS


def run(repeats: int = 3) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for model_name, setup, probe_name, probes in CASES:
        costs = [_cost(setup, probes) for _ in range(repeats)]
        probe, step = statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs)
        rows.append(
            {
                "benchmark": "probe_costs",
                "case": f"{model_name}: {probe_name}",
                "ours": f"{probe * 1e3:.1f} ms a measurement",
                "anchor": f"a training step: {step * 1e3:.2f} ms",
                "ratio": f"{probe / step:.1f} steps",
            }
        )
    return rows
