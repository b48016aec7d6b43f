"""Job lifecycle: the only place that moves a job between states (guarded, see lifecycle.py), and the job
history's queries."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.orm import Session

from backend.models import Artifact, Job, JobStatus, JobTag, Result, Sweep, Team, User, utcnow
from backend.config import Settings
from backend.services import accounts, lifecycle, notices
from backend.services.artifacts import ArtifactStore
from backend.services.series import truncate_series
from backend.spec import JobSpec

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.running, S.cancelled, S.failed}),
    # running → queued is the reaper handing a lost worker's job to another worker.
    # running → lost: a tracked run's tracker went silent; lost → ...: it came back, or sent its end late.
    S.running: frozenset({S.queued, S.succeeded, S.failed, S.cancelled, S.diverged, S.lost}),
    S.lost: frozenset({S.running, S.succeeded, S.failed, S.cancelled, S.diverged}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
    S.diverged: frozenset(),
}


def check_transition(old: JobStatus | str, new: JobStatus | str) -> None:
    lifecycle.check(ALLOWED, old, new)


def transition(session: Session, job_id: int, new: JobStatus, *conditions, only_from: list[str] | None = None, **values) -> bool:
    """Move a job to `new` if its current state allows it (and `conditions` hold); True if this call did."""
    return lifecycle.transition(session, Job, job_id, ALLOWED, new, *conditions, only_from=only_from, updated_at=utcnow(), **values)


def create_job(
    session: Session, spec: JobSpec, max_attempts: int, owner: tuple[int, int], sweep: Sweep | None = None, params: dict | None = None
) -> Job:
    """`owner`: the (team, creator) ids."""
    job = Job(
        team_id=owner[0],
        creator_id=owner[1],
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status=JobStatus.queued.value,
        stage="queued",
        max_attempts=max_attempts,
        sweep_id=sweep.id if sweep else None,
        sweep_params=params,
        model_kind=spec.model.kind,
        data_kind=spec.data.kind,
    )
    session.add(job)
    session.flush()
    return job


SORTS = {
    "created": (Job.created_at, Job.id),
    "name": (Job.name, Job.id),
    "status": (Job.status, Job.id),
}


@dataclass
class JobFilter:
    team_id: int
    creator: str | None = None  # a username
    status: list[str] | None = None
    q: str | None = None
    sweep_id: int | None = None
    tags: list[str] | None = None  # every one of them
    model: str | None = None
    data: str | None = None
    source: str | None = None  # server | tracked
    created_after: datetime | None = None
    created_before: datetime | None = None


def filtered(filters: JobFilter) -> Select[tuple[Job]]:
    """The team's jobs that pass the filters (the job list's, the export's)."""
    query = select(Job).where(Job.team_id == filters.team_id)
    if filters.creator:
        query = query.where(Job.creator_id.in_(select(User.id).where(func.lower(User.username) == filters.creator.lower())))
    if filters.sweep_id is not None:
        query = query.where(Job.sweep_id == filters.sweep_id)
    if filters.status:
        query = query.where(Job.status.in_(filters.status))
    if filters.q:
        query = query.where(func.lower(Job.name).contains(filters.q.lower(), autoescape=True))
    for tag in filters.tags or []:
        query = query.where(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    if filters.model:
        query = query.where(Job.model_kind == filters.model)
    if filters.data:
        query = query.where(Job.data_kind == filters.data)
    if filters.source:
        query = query.where(Job.source == filters.source)
    if filters.created_after is not None:
        query = query.where(Job.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(Job.created_at < filters.created_before)
    return query


def list_jobs(session: Session, filters: JobFilter, *, limit: int, offset: int, sort: str = "-created") -> tuple[list[Job], int]:
    query = filtered(filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    key, tie = SORTS[sort.lstrip("-")]
    order = (key.desc(), tie.desc()) if sort.startswith("-") else (key.asc(), tie.asc())
    rows = session.scalars(query.order_by(*order).limit(limit).offset(offset))
    return list(rows), total


def delete_job(session: Session, job: Job, store: ArtifactStore) -> None:
    """The job and everything it recorded (rows go by cascade; artifact files here)."""
    for artifact_id in session.scalars(select(Artifact.id).where(Artifact.job_id == job.id)).all():
        store.delete(artifact_id)
    session.delete(job)


def set_tags(session: Session, job: Job, tags: list[str]) -> None:
    job.tag_rows = [JobTag(job_id=job.id, tag=t) for t in sorted(set(tags))]


def request_cancel(session: Session, job: Job) -> str | None:
    """Cancel a queued job at once, or flag a running one for its worker. Returns a task id to revoke."""
    if transition(session, job.id, S.cancelled, only_from=[S.queued.value], stage="cancelled before start"):
        return job.celery_task_id
    session.execute(update(Job).where(Job.id == job.id, Job.status == S.running.value).values(cancel_requested=True))
    return None


def running_quota_full(session: Session, job: Job, settings: Settings) -> int | None:
    """The team's running-job quota if it is reached (the job must wait), else None. Locks the team's row
    on PostgreSQL until the claim commits, so two workers cannot both take the last place."""
    if job.team_id is None:
        return None
    team = session.get(Team, job.team_id, with_for_update=True)
    assert team is not None
    limit = accounts.quotas(team, settings).max_running_jobs
    return limit if accounts.count_jobs(session, job.team_id, S.running) >= limit else None


def claim_job(session: Session, job_id: int, *, worker_host: str, device: str, stale_before: datetime) -> Job | None:
    """Start an attempt if the job is queued (or running with a dead worker). None: not ours to run."""
    claimed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == S.queued.value,
                (Job.status == S.running.value) & (Job.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=S.running.value,
            attempts=Job.attempts + 1,
            heartbeat_at=utcnow(),
            started_at=func.coalesce(Job.started_at, utcnow()),
            worker_host=worker_host,
            device=device,
            stage="starting",
            error=None,
        )
    ).rowcount
    if claimed != 1:
        return None
    notices.changed(session, job_id)
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def latest_checkpoint(session: Session, job_id: int) -> Artifact | None:
    return session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint").order_by(Artifact.step.desc())
    ).first()


def rewind_outputs(session: Session, job_id: int, store: ArtifactStore, to_step: int) -> None:
    """Drop what an earlier attempt recorded at or after `to_step` (0: everything), keeping the checkpoint
    at `to_step` that the new attempt resumes from: the series then have no gap and no duplicate step.
    """
    truncate_series(session, job_id, to_step)
    session.execute(delete(Result).where(Result.job_id == job_id, Result.step >= to_step))
    stale = session.scalars(
        select(Artifact).where(
            Artifact.job_id == job_id,
            Artifact.step >= to_step,
            ~((Artifact.kind == "checkpoint") & (Artifact.step == to_step) & (Artifact.step > 0)),
        )
    ).all()
    for artifact in stale:
        store.delete(artifact.id)
        session.delete(artifact)


def reap_stale_jobs(session: Session, timeout: float, tracked_timeout: float) -> list[int]:
    """Requeue running jobs whose worker stopped beating; fail those past their attempt cap. A tracked run whose
    tracker stopped beating for `tracked_timeout` is `lost`, everything it sent kept.

    Returns the ids to send to the queue again (after the caller commits).
    """
    _lose_silent_runs(session, tracked_timeout)
    cutoff = utcnow() - timedelta(seconds=timeout)
    stale = session.scalars(
        select(Job).where(Job.status == S.running.value, Job.source == "server", or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)))
    ).all()
    requeue: list[int] = []
    for job in stale:
        guard = [S.running.value]
        # The heartbeat is checked again in the UPDATE: a worker that beat since the SELECT keeps its job.
        still_stale = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
        if job.attempts >= job.max_attempts:
            transition(
                session,
                job.id,
                S.failed,
                still_stale,
                only_from=guard,
                error=f"worker lost {job.attempts} times (attempt cap {job.max_attempts})",
                stage="failed",
            )
        elif transition(session, job.id, S.queued, still_stale, only_from=guard, stage=f"requeued: worker {job.worker_host} lost"):
            requeue.append(job.id)
    return requeue


def _lose_silent_runs(session: Session, timeout: float) -> None:
    cutoff = utcnow() - timedelta(seconds=timeout)
    silent = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
    for job in session.scalars(select(Job).where(Job.status == S.running.value, Job.source == "tracked", silent)).all():
        since = job.heartbeat_at.isoformat(timespec="seconds") + "Z" if job.heartbeat_at else "its start"
        why = f"the tracker on {job.worker_host} stopped sending: no heartbeat since {since} (timeout {timeout:g} s)"
        transition(session, job.id, S.lost, silent, only_from=[S.running.value], stage="lost", error=why)


def recover_after_restart(session: Session) -> list[int]:
    """Embedded mode only (its one worker is gone): running jobs go back to the queue.

    Returns every queued job's id, to be sent again; a second delivery of a job is harmless (claim_job).
    """
    for job_id in session.scalars(select(Job.id).where(Job.status == S.running.value, Job.source == "server")).all():
        transition(session, job_id, S.queued, only_from=[S.running.value], stage="requeued after restart")
    return list(session.scalars(select(Job.id).where(Job.status == S.queued.value).order_by(Job.id)))
