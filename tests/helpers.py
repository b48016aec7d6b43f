"""Helpers the tests share: a recorder that keeps what a run reports in lists, specs, and readers of answers."""

import json
from pathlib import Path
from typing import Any

import torch


class ListRecorder:
    """Keeps what the loop reports in lists; can ask the loop to stop after a number of steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.points: list[tuple[int, str, float]] = []
        self.checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.artifacts: list[tuple[str, int, dict[str, torch.Tensor], dict[str, str] | None]] = []
        self.results: list[tuple[str, int, dict[str, Any]]] = []
        self.partials: list[dict[str, Any]] = []  # results that a later one replaced
        self.last_progress: tuple[int, int, str] | None = None
        self.stop_after = stop_after

    def log(self, step, metrics):
        self.points += [(step, k, v) for k, v in metrics.items()]

    def progress(self, step, total, stage):
        self.last_progress = (step, total, stage)

    def should_stop(self):
        return self.stop_after is not None and self.last_progress is not None and self.last_progress[0] >= self.stop_after

    def save_tensors(self, kind, step, tensors, metadata=None):
        if kind == "checkpoint":
            self.checkpoints.append((step, tensors))
        self.artifacts.append((kind, step, tensors, metadata))

    def result(self, kind, step, payload):
        """Like the DbRecorder: a result replaces a partial one of the same kind and step."""
        replaced = [r for r in self.results if (r[0], r[1]) == (kind, step) and r[2].get("partial")]
        self.partials += [p for _, _, p in replaced]
        self.results = [r for r in self.results if r not in replaced] + [(kind, step, payload)]

    def series(self, name: str) -> list[float]:
        return [v for _, k, v in self.points if k == name]


def run(raw: dict, **kw) -> tuple[Any, ListRecorder]:
    """Train a raw spec on the CPU into a ListRecorder (`kw`: its stop_after): the outcome and the recorder."""
    from backend.spec import JobSpec
    from worker.training.loop import train

    recorder = ListRecorder(**kw)
    return train(JobSpec.model_validate(raw), recorder, torch.device("cpu")), recorder


def field_errors(response) -> dict[str, str]:
    """A 422's messages by the field they name (dotted, without the body/query prefix)."""
    assert response.status_code == 422, response.text
    return {".".join(map(str, e["loc"][1:])) or "body": e["msg"] for e in response.json()["detail"]}


def job_count() -> int:
    """Jobs in the configured database."""
    from sqlalchemy import func, select

    from backend.db import session_scope
    from backend.models import Job

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def planted_pair_job(strength: float, hessian: bool = False) -> dict:
    """Full-batch GD by MSE at the edge of stability on images with a planted patch shared by classes 0 and 1
    (the opposing-signals setting), with the signals probe (and the Hessian probe)."""
    return {
        "name": "signals",
        "model": {"kind": "mlp", "widths": [64]},
        "data": {"kind": "opposing_features", "examples": 1000, "classes": 4, "strength": strength, "share": 0.5, "class_signal": 0.3},
        "optimizer": {"kind": "sgd", "lr": 0.12},
        "train": {"steps": 260, "batch_size": 100_000, "loss": "mse", "eval_every": 100, "checkpoint_every": None},
        "probes": {"signals": {"detect_every": 100, "on_rise": False}}
        | ({"hessian": {"every": 50, "top_k": 1, "examples": 100_000, "tol": 1e-4}} if hessian else {}),
    }


TEACHER = [2.0, 1.5, 1.0]  # the singular values of deep_linear_job's teacher


def deep_linear_job(depth: int = 2, steps: int = 1400, lr: float = 0.012, init: str = "balanced", scale: float = 0.1) -> dict:
    """Full-batch GD by MSE of a deep linear network on a whitened linear teacher of rank 3, with the modes probe."""
    return {
        "name": "deep-linear",
        "model": {"kind": "linear", "depth": depth, "width": 16, "init": init, "scale": scale},
        "data": {"kind": "linear_teacher", "dim": 8, "outputs": 6, "singular_values": TEACHER, "examples": 400},
        "optimizer": {"kind": "sgd", "lr": lr},
        "train": {"steps": steps, "batch_size": 100_000, "loss": "mse", "eval_every": 1000, "checkpoint_every": 400},
        "probes": {"modes": {"every": 20}},
    }


def kept_series(root: Path) -> dict[str, dict[int, float | None]]:
    """The series a tracked run kept on disk (its pending records), by name and step."""
    series: dict[str, dict[int, float | None]] = {}
    for segment in sorted((root / "pending").glob("*.jsonl")):
        for line in segment.read_text().splitlines():
            for p in json.loads(line).get("points", []):
                series.setdefault(p["name"], {})[p["step"]] = p["value"]
    return series
