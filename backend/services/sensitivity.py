"""A sweep over the learning rate as Wortsman et al. (2023) read it: final loss against learning rate, one curve
per value of another swept field, each with its LR sensitivity (dynascope.analysis.instability.lr_sensitivity),
and the largest attention logit at the end beside it."""

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from backend.figures.base import Figure
from backend.models import Job, JobStatus
from backend.services.series import read_series, series_names
from dynascope.analysis.lr_sensitivity import lr_sensitivity

DEFINITION = "LR sensitivity = E_η[min(ℓ(η), ℓ₀) − min_η ℓ(η)] over the swept learning rates, ℓ₀ the loss at initialization"
LOGITS = "instability/attn_logit_max/"


class NoLearningRate(ValueError):
    """The sweep does not vary a learning rate."""


class Curve(BaseModel):
    value: Any = Field(description="the value of the `by` field this curve holds (null: no such field)")
    lrs: list[float]
    loss: list[float | None] = Field(description="per learning rate: the mean final loss of its finished runs (null: all diverged)")
    capped: list[float] = Field(description="per learning rate: the mean of min(ℓ, ℓ₀), a diverged run counting as ℓ₀")
    diverged: list[int]
    runs: list[int]
    attention_logit: list[float | None] = Field(
        description="per learning rate: the mean over runs of the largest attention logit at its last probe"
    )
    jobs: list[list[int]]
    initial: float
    best: float
    sensitivity: float


class SensitivityOut(BaseModel):
    lr: str
    by: str | None
    series: str
    definition: str = DEFINITION
    curves: list[Curve]
    pending: int = Field(description="runs not ended yet (left out)")
    figures: list[Figure] = Field([], description="what the dashboard draws: loss against lr, the attention logit beside it")


def learning_rate_field(fields: list[str]) -> str:
    found = [f for f in fields if f == "lr" or f.endswith(".lr")]
    if not found:
        raise NoLearningRate(
            f"the sweep does not vary a learning rate (it sweeps {fields}): LR sensitivity compares runs across learning rates"
        )
    return found[0]


def default_by(fields: list[str], lr: str) -> str | None:
    """The swept field the curves are drawn by: the first that is neither the learning rate nor a seed."""
    return next((f for f in fields if f != lr and not f.endswith("seed")), None)


def _final(steps: np.ndarray, values: np.ndarray) -> float:
    return float(values[np.argmax(steps)]) if len(values) else math.nan


def _logit_at_end(session: Session, job: Job) -> float | None:
    names = [n for n in series_names(session, job.id) if n.startswith(LOGITS)]
    finals = [_final(*arrays) for arrays in read_series(session, job.id, names).values()]
    finite = [v for v in finals if math.isfinite(v)]
    return max(finite) if finite else None


def _run(session: Session, job: Job, series: str) -> tuple[float, float, float | None] | None:
    """(final loss — inf when diverged —, loss at initialization, largest attention logit at the end)."""
    steps, values = read_series(session, job.id, [series])[series]
    if not len(values) or not math.isfinite(values[np.argmin(steps)]):
        return None
    final = math.inf if job.status == JobStatus.diverged.value else _final(steps, values)
    return final if math.isfinite(final) else math.inf, float(values[np.argmin(steps)]), _logit_at_end(session, job)


def sensitivity(session: Session, jobs: list[Job], lr: str, by: str | None, series: str) -> SensitivityOut:
    groups: dict[Any, list[tuple[float, Job, tuple[float, float, float | None]]]] = {}
    pending = 0
    for job in jobs:
        params = job.sweep_params or {}
        if job.status in (JobStatus.queued.value, JobStatus.running.value, JobStatus.lost.value):
            pending += 1
            continue
        if job.status in (JobStatus.failed.value, JobStatus.cancelled.value) or lr not in params:
            continue
        if (found := _run(session, job, series)) is not None:
            groups.setdefault(params.get(by) if by else None, []).append((float(params[lr]), job, found))
    ordered = sorted(groups.items(), key=lambda kv: (0, kv[0], "") if isinstance(kv[0], (int, float)) else (1, 0, str(kv[0])))
    curves = [_curve(value, runs) for value, runs in ordered]
    return SensitivityOut(lr=lr, by=by, series=series, curves=curves, pending=pending)


def _curve(value: Any, runs: list[tuple[float, Job, tuple[float, float, float | None]]]) -> Curve:
    result = lr_sensitivity([(lr, final, initial) for lr, _, (final, initial, _) in runs])
    at = {lr: [r for r in runs if r[0] == lr] for lr in result.lrs}

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return Curve(
        value=value,
        lrs=result.lrs,
        loss=[mean([f for _, _, (f, _, _) in at[lr] if math.isfinite(f)]) for lr in result.lrs],
        capped=result.capped,
        diverged=[sum(1 for _, _, (f, _, _) in at[lr] if not math.isfinite(f)) for lr in result.lrs],
        runs=[len(at[lr]) for lr in result.lrs],
        attention_logit=[mean([a for _, _, (_, _, a) in at[lr] if a is not None]) for lr in result.lrs],
        jobs=[[job.id for _, job, _ in at[lr]] for lr in result.lrs],
        initial=result.initial,
        best=result.best,
        sensitivity=result.sensitivity,
    )
