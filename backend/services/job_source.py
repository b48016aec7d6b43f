"""A job's recorded numbers as the figures read them (backend.figures.base.Source), from the database."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.figures.base import MAX_POINTS, Row, Series
from backend.models import Job, Result
from backend.services.downsample import downsample_minmax, json_safe
from backend.services.series import read_series, series_names


class JobSource:
    def __init__(self, session: Session, job: Job) -> None:
        self.session, self.job = session, job
        self.spec: dict[str, Any] = job.spec
        self._names: list[str] | None = None

    def _all(self) -> list[str]:
        if self._names is None:
            self._names = series_names(self.session, self.job.id)
        return self._names

    def series(self, names: list[str], max_points: int = MAX_POINTS) -> dict[str, Series]:
        have = set(self._all())
        found = read_series(self.session, self.job.id, [n for n in dict.fromkeys(names) if n in have])
        out = {}
        for name, (steps, values) in found.items():
            s, v = downsample_minmax(steps, values, max_points)
            out[name] = Series(s.tolist(), json_safe(v))
        return out

    def names(self, prefix: str) -> list[str]:
        return [n for n in self._all() if n.startswith(prefix)]

    def results(self, kind: str) -> list[Row]:
        query = select(Result).where(Result.job_id == self.job.id, Result.kind == kind).order_by(Result.step, Result.id)
        return [Row(r.id, r.step, r.data) for r in self.session.scalars(query)]

    def kinds(self) -> set[str]:
        """The kinds of result this job has (a probe's name, `<kind>_analysis`, …)."""
        return set(self.session.scalars(select(Result.kind).where(Result.job_id == self.job.id).distinct()))
