"""A sweep as a phase diagram: one number per job (a final, largest or smallest value of a series, or whether
it diverged) on the grid of two swept fields."""

import math
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.figures.sweep import phase_figure
from backend.models import Job, JobStatus
from backend.services.series import read_series

METRIC_KINDS = ("final", "max", "min")


def job_value(session: Session, job: Job, metric: str) -> float | None:
    """`final:<series>`, `max:<series>`, `min:<series>` (over finite values), or `diverged` (1/0; null while
    the job has not ended)."""
    if metric == "diverged":
        if job.status in (JobStatus.queued.value, JobStatus.running.value):
            return None
        return 1.0 if job.status == JobStatus.diverged.value else 0.0
    kind, _, name = metric.partition(":")
    steps, values = read_series(session, job.id, [name]).get(name, (np.array([]), np.array([])))
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    return float(finite[-1] if kind == "final" else finite.max() if kind == "max" else finite.min())


def _key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def phase_diagram(session: Session, jobs: list[Job], x: str, y: str | None, metric: str) -> dict[str, Any]:
    """z[row = y value][column = x value]: the mean over the jobs of that cell (other swept fields vary inside
    a cell: their count is given), null where no job has a value."""
    cells: dict[tuple[Any, Any], list[tuple[int, float | None]]] = {}
    for job in jobs:
        params = job.sweep_params or {}
        key = (params.get(x), params.get(y) if y else None)
        cells.setdefault(key, []).append((job.id, job_value(session, job, metric)))
    xs = sorted({k[0] for k in cells}, key=_key)
    ys = sorted({k[1] for k in cells}, key=_key) if y else [None]
    z, ids, counts = [], [], []
    for yv in ys:
        row, row_ids, row_counts = [], [], []
        for xv in xs:
            entries = cells.get((xv, yv), [])
            known = [v for _, v in entries if v is not None and math.isfinite(v)]
            row.append(sum(known) / len(known) if known else None)
            row_ids.append([i for i, _ in entries])
            row_counts.append(len(known))
        z.append(row)
        ids.append(row_ids)
        counts.append(row_counts)
    phase = {"metric": metric, "x": x, "y": y, "xs": xs, "ys": ys, "z": z, "jobs": ids, "counts": counts}
    return phase | {"figure": phase_figure(phase).model_dump()}
