"""Tracked runs: jobs trained in a user's own loop and reported by its tracker (dynascope.tracker) through the
ingest API. Every write is idempotent: a series takes only steps after its last one, a result document only if
the same one is not there yet (a partial one is replaced, as a worker's are), so retried and repeated batches
change nothing."""

import hashlib
from collections import defaultdict

import numpy as np
import safetensors
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.models import Artifact, Job, JobStatus, MetricChunk, Result, utcnow
from backend.services import jobs, lifecycle
from backend.services.artifacts import ArtifactStore
from backend.services.downsample import json_safe
from backend.services.series import append_points, read_series, truncate_series
from dynascope.results import RESULTS
from dynascope.tracking import Ack, Finish, Point, Resumed, RunCreate

S = JobStatus
# A tracked run its owner opens again (`dynascope.init(resume=ID)`): from any end, or while it is still running
# (its process died and it is not lost yet). Worker jobs never go back: their ends stay final.
RESUMABLE = {old: frozenset({S.running}) for old in (S.running, S.lost, S.succeeded, S.failed, S.cancelled, S.diverged)}


class RefusedWrite(ValueError):
    """A write that names a run it cannot go to (not a tracked run), or a document of an unknown shape."""


def create_run(session: Session, request: RunCreate, owner: tuple[int, int]) -> Job:
    """A running job (it is already training) with the tracker's config, probes and facts as its spec."""
    facts = request.facts
    job = Job(
        team_id=owner[0],
        creator_id=owner[1],
        name=request.name,
        source="tracked",
        spec={
            "name": request.name,
            "config": request.config,
            "probes": request.probes.model_dump(mode="json"),
            "tracked": facts.model_dump(),
        },
        status=S.running.value,
        stage="running (tracked)",
        started_at=utcnow(),
        heartbeat_at=utcnow(),
        worker_host=facts.host,
        device=facts.device,
        model_kind=facts.model[:50] or None,
        data_kind=None,
        attempts=1,
    )
    session.add(job)
    session.flush()
    return job


def writable(session: Session, job: Job) -> Job:
    """The run's row, locked until the write commits (writes to one run are serialized on PostgreSQL)."""
    if job.source != "tracked":
        raise RefusedWrite(f"job {job.id} is trained by a worker, not a tracked run: it takes no writes from a tracker")
    locked = session.get(Job, job.id, with_for_update=True, populate_existing=True)
    assert locked is not None
    return locked


def _last_steps(session: Session, job_id: int, names: list[str]) -> dict[str, int]:
    query = select(MetricChunk.name, MetricChunk.last_step).where(MetricChunk.job_id == job_id, MetricChunk.name.in_(names))
    last: dict[str, int] = {}
    for name, step in session.execute(query):
        last[name] = max(step, last.get(name, -1))
    return last


def _merge(session: Session, job_id: int, name: str, values: dict[int, float]) -> int:
    """Points that arrive before the series' last step (a batch kept on disk, sent after newer ones): the steps it
    lacks go in their place, the tail of the series rewritten once. The number added."""
    first = min(values)
    steps, kept = read_series(session, job_id, [name], after_step=first - 1)[name]
    merged = dict(zip(steps.tolist(), kept.tolist(), strict=True))
    new = {s: v for s, v in values.items() if s not in merged}
    if new:
        merged |= new
        order = sorted(merged)
        truncate_series(session, job_id, first, name)
        session.flush()
        append_points(session, job_id, name, np.asarray(order), np.asarray([merged[s] for s in order], dtype=float))
    return len(new)


def record_points(session: Session, job: Job, points: list[Point]) -> Ack:
    """Each series takes the steps it does not have yet; a step it has is a repeat (the first value stays)."""
    by_name: dict[str, dict[int, float]] = defaultdict(dict)
    for p in points:
        by_name[p.name][p.step] = np.nan if p.value is None else p.value
    last = _last_steps(session, job.id, list(by_name))
    accepted = 0
    for name, values in by_name.items():
        if min(values) > last.get(name, -1):
            steps = sorted(values)
            append_points(session, job.id, name, np.asarray(steps), np.asarray([values[s] for s in steps], dtype=float))
            accepted += len(steps)
        else:
            accepted += _merge(session, job.id, name, values)
    newest = max((p.step for p in points), default=None)
    if newest is not None and newest > job.step:
        job.step = newest
        total = job.spec["tracked"].get("total_steps")
        job.progress = min(1.0, newest / total) if total else job.progress
    return Ack(accepted=accepted, skipped=len(points) - accepted)


def record_result(session: Session, job: Job, kind: str, step: int, data: dict) -> Ack:
    """A probe's document (validated by its model); it replaces a partial one at the same step."""
    document = RESULTS.get(kind)
    if document is None:
        raise RefusedWrite(f"kind: {kind!r} is not a kind of result a tracker sends (one of {sorted(RESULTS)})")
    recorded = json_safe(document.model_validate(data).recorded())
    rows = session.scalars(select(Result).where(Result.job_id == job.id, Result.kind == kind, Result.step == step)).all()
    if any(row.data == recorded for row in rows):
        return Ack(accepted=0, skipped=1)
    for row in rows:
        if row.data.get("partial"):
            session.delete(row)
    session.add(Result(job_id=job.id, kind=kind, step=step, data=recorded))
    return Ack(accepted=1, skipped=0)


def beat(session: Session, job: Job, step: int | None, stage: str | None) -> None:
    """The tracker is alive: a lost run whose tracker comes back is running again."""
    if job.status == S.lost.value:
        jobs.transition(
            session,
            job.id,
            S.running,
            only_from=[S.lost.value],
            stage="running (tracked; back after a silence)",
            error=None,
            finished_at=None,
        )
    values: dict = {"heartbeat_at": utcnow()}
    if stage:
        values["stage"] = stage
    if step is not None and step > job.step:
        values["step"] = step
    session.execute(update(Job).where(Job.id == job.id, Job.status == S.running.value).values(**values))


def resume(session: Session, job: Job) -> Resumed:
    """The run is running again, with no cancel pending; it goes on after the last step any series has."""
    lifecycle.transition(
        session,
        Job,
        job.id,
        RESUMABLE,
        S.running,
        Job.source == "tracked",
        only_from=[old.value for old in RESUMABLE],
        stage="running (tracked; resumed)",
        error=None,
        finished_at=None,
        cancel_requested=False,
        heartbeat_at=utcnow(),
    )
    last = session.scalar(select(func.max(MetricChunk.last_step)).where(MetricChunk.job_id == job.id))
    return Resumed(id=job.id, status=S.running.value, next_step=0 if last is None else last + 1)


def record_artifact(session: Session, store: ArtifactStore, job: Job, kind: str, step: int, data: bytes) -> Ack:
    """A probe's tensors as safetensors (read as a header and raw arrays: never unpickled); the same bytes again
    for the same kind and step are a repeat."""
    try:
        safetensors.deserialize(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error for anything malformed
        raise RefusedWrite(f"not a safetensors file: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    same = select(Artifact.id).where(Artifact.job_id == job.id, Artifact.kind == kind, Artifact.step == step, Artifact.sha256 == digest)
    if session.scalar(same) is not None:
        return Ack(accepted=0, skipped=1)
    stored = store.put(data)
    session.add(Artifact(id=stored.id, job_id=job.id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))
    return Ack(accepted=1, skipped=0)


def finish(session: Session, job: Job, request: Finish) -> bool:
    """The run's end as the tracker saw it; False if it had ended already (a repeat changes nothing)."""
    stage = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled", "diverged": "diverged"}[request.status]
    values = {"stage": stage, "error": request.error, "heartbeat_at": utcnow()}
    if request.status == "succeeded":
        values["progress"] = 1.0
    return jobs.transition(session, job.id, S(request.status), only_from=[S.running.value, S.lost.value], **values)
