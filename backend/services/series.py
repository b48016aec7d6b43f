"""Metric series stored as packed chunks (see models.MetricChunk)."""

from collections.abc import Iterable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import MetricChunk
from backend.services import notices

CHUNK_POINTS = 1024
_STEP_DTYPE = np.dtype("<i8")
_VALUE_DTYPE = np.dtype("<f8")


def summarize(chunk: MetricChunk) -> None:
    """The chunk's smallest, largest and last finite value (null where it has none)."""
    values = np.frombuffer(chunk.values, _VALUE_DTYPE)
    finite = values[np.isfinite(values)]
    chunk.vmin, chunk.vmax, chunk.vlast = (
        (float(finite.min()), float(finite.max()), float(finite[-1])) if len(finite) else (None, None, None)
    )


def append_points(session: Session, job_id: int, name: str, steps: np.ndarray, values: np.ndarray, only_new: bool = False) -> None:
    """Append points (steps increasing) to a series, filling the last chunk before opening a new one; `only_new`
    skips those at or before the series' last stored step (a retried write that may have landed)."""
    notices.changed(session, job_id)
    steps = np.asarray(steps, dtype=_STEP_DTYPE)
    values = np.asarray(values, dtype=_VALUE_DTYPE)
    last = session.scalars(
        select(MetricChunk).where(MetricChunk.job_id == job_id, MetricChunk.name == name).order_by(MetricChunk.seq.desc()).limit(1)
    ).first()
    if only_new and last is not None:
        fresh = steps > last.last_step
        steps, values = steps[fresh], values[fresh]
        if not len(steps):
            return
    pos = 0
    if last is not None and last.count < CHUNK_POINTS:
        take = min(CHUNK_POINTS - last.count, len(steps))
        last.steps = last.steps + steps[:take].tobytes()
        last.values = last.values + values[:take].tobytes()
        last.count += take
        last.last_step = int(steps[take - 1])
        summarize(last)
        pos = take
    seq = last.seq + 1 if last is not None else 0
    while pos < len(steps):
        s, v = steps[pos : pos + CHUNK_POINTS], values[pos : pos + CHUNK_POINTS]
        chunk = MetricChunk(
            job_id=job_id,
            name=name,
            seq=seq,
            first_step=int(s[0]),
            last_step=int(s[-1]),
            count=len(s),
            steps=s.tobytes(),
            values=v.tobytes(),
        )
        summarize(chunk)
        session.add(chunk)
        seq += 1
        pos += len(s)


def series_names(session: Session, job_id: int) -> list[str]:
    rows = session.scalars(select(MetricChunk.name).where(MetricChunk.job_id == job_id).distinct())
    return sorted(rows)


def read_series(
    session: Session, job_id: int, names: Iterable[str], after_step: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Whole series (or only the points after `after_step`), as (steps, values) arrays per name."""
    names = list(names)
    query = select(MetricChunk).where(MetricChunk.job_id == job_id, MetricChunk.name.in_(names))
    if after_step is not None:
        query = query.where(MetricChunk.last_step > after_step)
    parts: dict[str, list[MetricChunk]] = {name: [] for name in names}
    for chunk in session.scalars(query.order_by(MetricChunk.name, MetricChunk.seq)):
        parts[chunk.name].append(chunk)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, chunks in parts.items():
        steps = np.concatenate([np.frombuffer(c.steps, _STEP_DTYPE) for c in chunks] or [np.empty(0, _STEP_DTYPE)])
        values = np.concatenate([np.frombuffer(c.values, _VALUE_DTYPE) for c in chunks] or [np.empty(0)])
        if after_step is not None:
            keep = steps > after_step
            steps, values = steps[keep], values[keep]
        out[name] = (steps, values)
    return out


def truncate_series(session: Session, job_id: int, from_step: int, name: str | None = None) -> None:
    """Drop every point at or after `from_step`, of every series or of one (a resumed attempt writes them again)."""
    query = select(MetricChunk).where(MetricChunk.job_id == job_id, MetricChunk.last_step >= from_step)
    if name is not None:
        query = query.where(MetricChunk.name == name)
    for chunk in session.scalars(query).all():
        steps = np.frombuffer(chunk.steps, _STEP_DTYPE)
        keep = int(np.searchsorted(steps, from_step))
        if keep == 0:
            session.delete(chunk)
            continue
        chunk.steps = steps[:keep].tobytes()
        chunk.values = np.frombuffer(chunk.values, _VALUE_DTYPE)[:keep].tobytes()
        chunk.count, chunk.last_step = keep, int(steps[keep - 1])
        summarize(chunk)
