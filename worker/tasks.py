"""run_job(job_id): load the row → claim it → train with probes → record. Safe to deliver twice."""

import logging
import socket
import traceback
from datetime import timedelta

import torch
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from pydantic import TypeAdapter
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import session_scope
from backend.models import Analysis, Artifact, Job, JobStatus, Result, utcnow
from backend.queue import RUN_ANALYSIS_TASK, RUN_JOB_TASK, get_celery
from backend.services import jobs as job_service
from backend.services.artifacts import LocalArtifactStore
from backend.spec import CheckpointAnalysis, JobSpec
from worker.recorder import DbRecorder, json_safe
from worker.training.analyses import analyze_checkpoint
from worker.training import checkpoint
from worker.training.checkpoint import TrainState, unpack
from worker.training.loop import Outcome, train
from worker.training.models import pick_device

log = logging.getLogger(__name__)
celery_app = get_celery()
HOST = f"{socket.gethostname()}"


@worker_process_init.connect
def _pin_threads(**_: object) -> None:
    # Two processes each taking every core collapse throughput on a small machine; pin per worker.
    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


def _resume_state(session: Session, job_id: int, store: LocalArtifactStore) -> TrainState | None:
    """The newest checkpoint an earlier attempt left, read back (safetensors: no code is ever loaded)."""
    artifact = job_service.latest_checkpoint(session, job_id)
    if artifact is None:
        return None
    try:
        return unpack(*checkpoint.read(store.path(artifact.id)))
    except (ValueError, KeyError):
        log.warning("job %s: checkpoint %s is not resumable; starting over", job_id, artifact.id)
        return None


@celery_app.task(name=RUN_JOB_TASK)
def run_job(job_id: int) -> str:
    settings = get_settings()
    store = LocalArtifactStore(settings.artifact_dir)
    device = pick_device(settings.device)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).terminal:
            return "skipped"
        stale_before = utcnow() - timedelta(seconds=settings.heartbeat_timeout)
        claimed = job_service.claim_job(
            session, job_id, worker_host=HOST, device=str(device), stale_before=stale_before
        )
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

    recorder = DbRecorder(job_id, attempt, store, settings.heartbeat_interval)
    if resume is not None:
        recorder.result("resume", resume.step, {"attempt": attempt, "from_step": resume.step})
    error: str | None = None
    try:
        outcome = train(spec, recorder, device, resume, uploads=store.path)
    except SoftTimeLimitExceeded:
        outcome, error = None, f"time limit of {settings.job_soft_time_limit} s reached"
    except Exception:
        outcome, error = None, traceback.format_exc(limit=20)
    finally:
        recorder.close()
    if recorder.lost.is_set():
        return "lost"  # another worker owns this job now; write nothing

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
    return outcome.value if outcome else "failed"


@celery_app.task(name=RUN_ANALYSIS_TASK)
def run_analysis(analysis_id: int) -> str:
    settings = get_settings()
    store = LocalArtifactStore(settings.artifact_dir)
    device = pick_device(settings.device)
    with session_scope() as session:
        started = session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.status == JobStatus.queued.value)
            .values(status=JobStatus.running.value, stage="loading the checkpoint")
        ).rowcount
        if not started:
            return "skipped"
        analysis = session.get(Analysis, analysis_id)
        job = session.get(Job, analysis.job_id)
        spec, request = JobSpec.model_validate(job.spec), TypeAdapter(CheckpointAnalysis).validate_python(analysis.params)
        artifact = session.scalars(
            select(Artifact).where(
                Artifact.job_id == job.id, Artifact.kind == "checkpoint", Artifact.step == analysis.step
            )
        ).first()
        job_id, step = job.id, analysis.step
        jobs = {job.id} | ({analysis.params["to_job"]} if analysis.params.get("to_job") else set())
        kept = {
            (a.job_id, a.step): store.path(a.id)
            for a in session.scalars(select(Artifact).where(Artifact.kind == "checkpoint", Artifact.job_id.in_(jobs)))
        }

    def stage(text: str) -> None:
        with session_scope() as session:
            session.execute(update(Analysis).where(Analysis.id == analysis_id).values(stage=text[:200]))

    try:
        if artifact is None:
            raise FileNotFoundError(f"job {job_id} has no checkpoint at step {step} any more")
        tensors, metadata = checkpoint.read(store.path(artifact.id))
        output = analyze_checkpoint(spec, request, step, tensors, metadata, device, store.path, stage, kept, job_id)
    except Exception:
        with session_scope() as session:
            session.execute(
                update(Analysis)
                .where(Analysis.id == analysis_id)
                .values(status=JobStatus.failed.value, error=traceback.format_exc(limit=20), finished_at=utcnow(), stage="failed")
            )
        return "failed"
    with session_scope() as session:
        session.add(Result(job_id=job_id, kind=f"{request.kind}_analysis", step=step, data=json_safe({**output.result, "analysis_id": analysis_id})))
        for kind, (tensors, meta) in output.artifacts.items():
            stored = store.put(safetensors_bytes(tensors, metadata={**meta, "analysis_id": str(analysis_id)}))
            session.add(Artifact(id=stored.id, job_id=job_id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id)
            .values(status=JobStatus.succeeded.value, stage="done", finished_at=utcnow())
        )
    return "succeeded"
