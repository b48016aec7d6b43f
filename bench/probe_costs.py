"""What a representation probe costs against a training step, in a server job's loop: the probe's own clock
(every hook timed by the runner, kept in the job's summary) per measurement, over the job's training time per
step. A digits MLP 64-128-128-10 at batch 128 and a CNN 16-32 at batch 128, one torch thread, each probe every
20 steps; the median of `repeats` runs."""

import statistics

import torch

from backend.spec import JobSpec
from worker.training.loop import train

MODELS = {"MLP 64-128-128-10": {"kind": "mlp", "widths": [128, 128]}, "CNN 16-32": {"kind": "cnn", "channels": [16, 32]}}
PROBES = {
    "collapse (1,000 examples, train and validation)": {"collapse": {"every": 20, "examples": 1000}},
    "representations (256 examples, full)": {"representations": {"every": 20, "examples": 256}},
    "representations (1,024 examples, minibatch of 256)": {"representations": {"every": 20, "examples": 1024, "batch": 256}},
}
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


def _cost(model: dict, probes: dict) -> tuple[float, float]:
    """(seconds per measurement, training seconds per step)."""
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "model": model,
            "data": {"kind": "digits"},
            "optimizer": {"kind": "sgd", "lr": 0.1},
            "train": {"steps": STEPS, "batch_size": 128, "seed": 0, "eval_every": STEPS, "checkpoint_every": None},
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
    for model_name, model in MODELS.items():
        for probe_name, probes in PROBES.items():
            costs = [_cost(model, probes) for _ in range(repeats)]
            probe, step = statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs)
            rows.append(
                {
                    "benchmark": "probe_costs",
                    "case": f"{model_name} on digits, batch 128: {probe_name}",
                    "ours": f"{probe * 1e3:.1f} ms a measurement",
                    "anchor": f"a training step: {step * 1e3:.2f} ms",
                    "ratio": f"{probe / step:.1f} steps",
                }
            )
    return rows
