"""run_job(job_id): load the row → claim it → train with probes → record. Safe to deliver twice.

The Celery app's entry point (`celery -A worker.tasks`): the analysis tasks register from worker.analysis_tasks."""

import logging
import socket
import traceback
from datetime import timedelta

import torch
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import session_scope
from backend.models import Job, JobStatus, utcnow
from backend.queue import RUN_JOB_TASK, enqueue_job, get_celery
from backend.services import jobs as job_service
from backend.services.artifacts import ArtifactStore, get_store
from backend.spec import JobSpec
from worker.outage import DatabaseUnreachable, Outage, or_requeue
from worker.recorder import DbRecorder
from worker.training import checkpoint
from worker.training.checkpoint import TrainState, unpack
from worker.training.loop import Outcome, train
from worker.training.models import pick_device

log = logging.getLogger(__name__)
celery_app = get_celery()
HOST = f"{socket.gethostname()}"
QUOTA_RETRY_SECONDS = 3.0


@worker_process_init.connect
def _pin_threads(**_: object) -> None:
    # Two processes each taking every core collapse throughput on a small machine; pin per worker.
    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


def _resume_state(session: Session, job_id: int, store: ArtifactStore) -> TrainState | None:
    """The newest checkpoint an earlier attempt left, read back (safetensors: no code is ever loaded)."""
    artifact = job_service.latest_checkpoint(session, job_id)
    if artifact is None:
        return None
    try:
        return unpack(*checkpoint.read(store.path(artifact.id)))
    except (ValueError, KeyError):
        log.warning("job %s: checkpoint %s is not resumable; starting over", job_id, artifact.id)
        return None


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: int) -> str:
    settings = get_settings()
    worker = self.request.hostname or HOST  # its node name, name@host: several workers on one host told apart
    device = pick_device(settings.device)
    return or_requeue(self, lambda: _run(job_id, worker, device))


def _run(job_id: int, worker: str, device: torch.device) -> str:
    settings = get_settings()
    store = get_store(settings)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).terminal:
            return "skipped"
        if job.status == JobStatus.queued.value and (limit := job_service.running_quota_full(session, job, settings)):
            job.stage = f"waiting: its team runs at most {limit} jobs at once"
            job.celery_task_id = enqueue_job(job_id, countdown=QUOTA_RETRY_SECONDS)
            return "waiting for the team's quota"
        stale_before = utcnow() - timedelta(seconds=settings.heartbeat_timeout)
        claimed = job_service.claim_job(session, job_id, worker_host=worker, device=str(device), stale_before=stale_before)
        if claimed is None:
            return "not claimable"
        attempt = claimed.attempts
        if attempt > claimed.max_attempts:
            job_service.transition(session, job_id, JobStatus.failed, error=f"attempt cap {claimed.max_attempts} reached")
            return "failed"
        spec = JobSpec.model_validate(claimed.spec)
        resume = _resume_state(session, job_id, store)
        job_service.rewind_outputs(session, job_id, store, resume.step if resume else 0)
    log.info("job %s attempt %s on %s from step %s", job_id, attempt, device, resume.step if resume else 0)

    recorder = DbRecorder(job_id, attempt, store, settings.heartbeat_interval, outage_seconds=settings.database_outage_seconds)
    if resume is not None:
        recorder.result("resume", resume.step, {"attempt": attempt, "from_step": resume.step})
    outcome, error = _train(spec, recorder, device, resume, store, settings.job_soft_time_limit)
    if recorder.lost.is_set():
        return "lost"  # another worker owns this job now; write nothing
    try:
        Outage(settings.database_outage_seconds, f"job {job_id}'s end").persist(lambda: _finish(job_id, attempt, outcome, error))
    except DatabaseUnreachable:
        # The row stays `running` until its heartbeat is stale: then it is requeued and resumes from its checkpoint.
        log.error("job %s: its end (%s) could not be written: the database stayed away", job_id, outcome or error)
    return outcome.value if outcome else "failed"


def _train(
    spec: JobSpec, recorder: DbRecorder, device: torch.device, resume: TrainState | None, store: ArtifactStore, time_limit: int
) -> tuple[Outcome | None, str | None]:
    """The run's outcome, or None and why it failed; everything buffered is written (or the database gave up)."""
    try:
        outcome, error = train(spec, recorder, device, resume, uploads=store.path), None
    except SoftTimeLimitExceeded:
        outcome, error = None, f"time limit of {time_limit} s reached"
    except DatabaseUnreachable as exc:
        outcome, error = None, str(exc)
    except Exception:
        outcome, error = None, traceback.format_exc(limit=20)
    try:
        recorder.close()
    except DatabaseUnreachable as exc:
        outcome, error = None, str(exc)
    return outcome, error


def _finish(job_id: int, attempt: int, outcome: Outcome | None, error: str | None) -> None:
    ours = Job.attempts == attempt
    with session_scope() as session:
        if outcome is Outcome.finished:
            job_service.transition(session, job_id, JobStatus.succeeded, ours, progress=1.0, stage="done")
        elif outcome is Outcome.diverged:
            job_service.transition(session, job_id, JobStatus.diverged, ours)  # the stage says at which step, why
        elif outcome is Outcome.stopped:
            job_service.transition(session, job_id, JobStatus.cancelled, ours, stage="cancelled")
        else:
            job_service.transition(session, job_id, JobStatus.failed, ours, error=error, stage="failed")


# The analysis tasks live beside the job task, on the same app.
from worker import analysis_tasks  # noqa: E402, F401
