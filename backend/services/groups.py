"""Runs grouped by spec fields, one series aggregated per group on the union of its runs' steps: the mean, the
standard deviation, the standard error, the minimum and maximum, and how many runs have a finite point at each
step. Computed from the full-resolution series and thinned only afterwards; a point that is NaN or ±Inf is left
out of the aggregate and counted."""

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from backend.models import Job
from backend.services.export import flat
from backend.services.series import read_series


class Group(BaseModel):
    key: dict[str, Any] = Field(description="the grouping fields' values")
    label: str
    jobs: list[int]
    steps: list[int]
    mean: list[float | None]
    std: list[float | None] = Field(description="sample standard deviation (n − 1) where at least two runs have a point; null elsewhere")
    sem: list[float | None] = Field(description="standard error of the mean, std / √n")
    min: list[float | None]
    max: list[float | None]
    count: list[int] = Field(description="runs with a finite point at the step")
    excluded: int = Field(description="points left out for being NaN or ±Inf")
    thinned: bool = Field(description="more steps than max_points: evenly spaced steps of the aggregate are given")


class Groups(BaseModel):
    series: str
    by: list[str]
    groups: list[Group]


@dataclass
class Aggregate:
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    excluded: int


def aggregate(runs: list[tuple[np.ndarray, np.ndarray]]) -> Aggregate:
    """Per step of the union of the runs' steps: statistics over the runs with a finite value there."""
    if not runs:
        nothing = np.empty(0)
        return Aggregate(np.empty(0, np.int64), nothing, nothing, nothing, nothing, np.empty(0, np.int64), 0)
    steps = np.unique(np.concatenate([s for s, _ in runs]))
    grid = np.full((len(runs), len(steps)), np.nan)
    excluded = 0
    for row, (s, v) in enumerate(runs):
        finite = np.isfinite(v)
        excluded += int((~finite).sum())
        grid[row, np.searchsorted(steps, s[finite])] = v[finite]
    count = np.isfinite(grid).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(grid, 0) / count
        std = np.sqrt(np.nansum((grid - mean) ** 2, 0) / (count - 1))
    std[count < 2] = np.nan
    big = np.where(np.isfinite(grid), grid, np.inf).min(0), np.where(np.isfinite(grid), grid, -np.inf).max(0)
    return Aggregate(steps, mean, std, np.where(count > 0, big[0], np.nan), np.where(count > 0, big[1], np.nan), count, excluded)


def _listed(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _label(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items()) or "all runs"


def group_runs(session: Session, jobs: list[Job], by: list[str], series: str, max_points: int) -> Groups:
    members: dict[str, tuple[dict[str, Any], list[Job]]] = {}
    for job in jobs:
        fields = flat(job.spec or {})
        key = {f: fields.get(f) for f in by}
        members.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(job)
    out = []
    for key, grouped in sorted(members.values(), key=lambda kv: [_order(v) for v in kv[0].values()]):
        runs = [read_series(session, j.id, [series])[series] for j in grouped]
        agg = aggregate([r for r in runs if len(r[0])])
        keep = np.unique(np.linspace(0, len(agg.steps) - 1, max_points).round().astype(int)) if len(agg.steps) > max_points else slice(None)
        with np.errstate(invalid="ignore", divide="ignore"):
            sem = agg.std / np.sqrt(agg.count)
        out.append(
            Group(
                key=key,
                label=_label(key),
                jobs=[j.id for j in grouped],
                steps=agg.steps[keep].tolist(),
                mean=_listed(agg.mean[keep]),
                std=_listed(agg.std[keep]),
                sem=_listed(sem[keep]),
                min=_listed(agg.min[keep]),
                max=_listed(agg.max[keep]),
                count=agg.count[keep].tolist(),
                excluded=agg.excluded,
                thinned=len(agg.steps) > max_points,
            )
        )
    return Groups(series=series, by=by, groups=out)
