"""Analyses of kept checkpoints as tasks: run_analysis(id) computes one in this worker, or plans a large grid
and splits it into run_grid_chunk(id, k) tasks that any idle worker takes; the worker that finishes the last
chunk assembles the surface. Every task is safe to deliver twice (a lost worker's chunk is simply redone)."""

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import session_scope
from backend.models import Analysis, Artifact, Job, JobStatus, Result, utcnow
from backend.queue import RUN_ANALYSIS_TASK, RUN_GRID_CHUNK_TASK, enqueue_grid_chunk, get_celery
from backend.services import analyses as liveness
from backend.services.artifacts import LocalArtifactStore
from backend.spec import CheckpointAnalysis, HessianAnalysis, InterpolationAnalysis, JobSpec
from worker.recorder import json_safe
from worker.training import checkpoint
from worker.training.analyses import analyze_checkpoint, context_at, directions_kind, plan_analysis
from worker.training.landscapes import GridPlan, evaluate_points, finish
from worker.training.models import pick_device
from worker.training.probes import ProbeStopped

celery_app = get_celery()


def _grid_points(request: Any) -> int:
    if isinstance(request, HessianAnalysis):
        return 0
    if isinstance(request, InterpolationAnalysis):
        return request.points + 2
    dims = getattr(request, "dims", 2)
    return 0 if getattr(request, "adaptive", False) else request.resolution**dims


def _set(analysis_id: int, **values: Any) -> int:
    with session_scope() as session:
        return session.execute(update(Analysis).where(Analysis.id == analysis_id).values(**values)).rowcount


def _fail(analysis_id: int, error: str) -> str:
    _set(analysis_id, status=JobStatus.failed.value, error=error, finished_at=utcnow(), stage="failed")
    return "failed"


def _cancelled(analysis_id: int) -> str:
    _set(analysis_id, status=JobStatus.cancelled.value, finished_at=utcnow(), stage="cancelled")
    return "cancelled"


@contextmanager
def _beating(analysis_id: int, chunk: int | None = None) -> Iterator[Callable[[], bool]]:
    """Beat for the analysis (or its chunk's claim) from a thread while the body runs; yields should_stop,
    true once the analysis is cancelled or no longer ours."""
    stop, done = threading.Event(), threading.Event()
    interval = get_settings().heartbeat_interval

    def loop() -> None:
        while not done.wait(interval):
            try:
                with session_scope() as session:
                    if liveness.beat(session, analysis_id, chunk):
                        stop.set()
            except Exception:  # a database hiccup: try again next beat
                continue

    thread = threading.Thread(target=loop, name=f"beat-analysis-{analysis_id}", daemon=True)
    thread.start()
    try:
        yield stop.is_set
    finally:
        done.set()
        thread.join()


def _load(session: Session, analysis: Analysis, store: LocalArtifactStore) -> dict[str, Any]:
    job = session.get(Job, analysis.job_id)
    jobs = {job.id} | ({analysis.params["to_job"]} if analysis.params.get("to_job") else set())
    kept = {
        (a.job_id, a.step): store.path(a.id)
        for a in session.scalars(select(Artifact).where(Artifact.kind == "checkpoint", Artifact.job_id.in_(jobs)))
    }
    return {
        "spec": JobSpec.model_validate(job.spec),
        "request": TypeAdapter(CheckpointAnalysis).validate_python(analysis.params),
        "job_id": job.id,
        "step": analysis.step,
        "kept": kept,
    }


def _publish(session: Session, analysis: Analysis, kind: str, data: dict[str, Any]) -> None:
    """The analysis' result document, replacing an earlier (partial) one."""
    for row in liveness.rows(session, analysis, kind):
        session.delete(row)
    session.add(Result(job_id=analysis.job_id, kind=kind, step=analysis.step, data=json_safe({**data, "analysis_id": analysis.id})))


@celery_app.task(name=RUN_ANALYSIS_TASK)
def run_analysis(analysis_id: int) -> str:
    settings = get_settings()
    store = LocalArtifactStore(settings.artifact_dir)
    device = pick_device(settings.device)
    with session_scope() as session:
        started = session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.status == JobStatus.queued.value, Analysis.cancel_requested.is_(False))
            .values(status=JobStatus.running.value, stage="loading the checkpoint", attempts=Analysis.attempts + 1, heartbeat_at=utcnow())
        ).rowcount
        if not started:
            return "skipped"
        analysis = session.get(Analysis, analysis_id)
        loaded = _load(session, analysis, store)
    request, job_id, step, kept = loaded["request"], loaded["job_id"], loaded["step"], loaded["kept"]
    kind = f"{request.kind}_analysis"
    try:
        if (job_id, step) not in kept:
            raise FileNotFoundError(f"job {job_id} has no checkpoint at step {step} any more")
        tensors, metadata = checkpoint.read(kept[(job_id, step)])
        if _grid_points(request) > settings.grid_chunk_points:
            with _beating(analysis_id):
                return _split(analysis_id, loaded, tensors, metadata, device, store, settings.grid_chunk_points)

        def publish(payload: dict[str, Any]) -> None:
            with session_scope() as session:
                _publish(session, session.get(Analysis, analysis_id), kind, {**payload, "partial": True})

        with _beating(analysis_id) as should_stop:
            output = analyze_checkpoint(
                loaded["spec"], request, step, tensors, metadata, device, store.path,
                lambda text: _set(analysis_id, stage=text[:200]), kept, job_id, should_stop=should_stop, publish=publish,
            )  # fmt: skip
    except ProbeStopped:
        return _cancelled(analysis_id)
    except Exception:
        return _fail(analysis_id, traceback.format_exc(limit=20))
    with session_scope() as session:
        analysis = session.get(Analysis, analysis_id)
        _publish(session, analysis, kind, output.result)
        for artifact_kind, (tensors, meta) in output.artifacts.items():
            stored = store.put(safetensors_bytes(tensors, metadata={**meta, "analysis_id": str(analysis_id)}))
            session.add(Artifact(id=stored.id, job_id=job_id, kind=artifact_kind, step=step, size=stored.size, sha256=stored.sha256))
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id)
            .values(status=JobStatus.succeeded.value, stage="done", finished_at=utcnow())
        )
    return "succeeded"


def _split(analysis_id: int, loaded: dict[str, Any], tensors, metadata, device, store: LocalArtifactStore, size: int) -> str:  # type: ignore[no-untyped-def]
    """Plan the grid here, keep its directions as an artifact, and queue one task per chunk of points."""
    ctx = context_at(loaded["spec"], loaded["step"], tensors, metadata, device, store.path)
    ctx.report = lambda text: _set(analysis_id, stage=text[:200])
    plan = plan_analysis(loaded["request"], ctx, loaded["step"], tensors, loaded["kept"], loaded["job_id"])
    chunks = -(-len(plan.points) // size)
    directions, meta = plan.direction_tensors()
    stored = store.put(safetensors_bytes(directions, metadata={**meta, "analysis_id": str(analysis_id)}))
    kind = directions_kind(loaded["request"])
    with session_scope() as session:
        step, job_id = loaded["step"], loaded["job_id"]
        session.add(Artifact(id=stored.id, job_id=job_id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))
        data = {"analysis_id": analysis_id, "plan": plan.spec(), "directions": stored.id, "chunks": chunks, "chunk_points": size,
                "started": time.time()}  # fmt: skip
        session.add(Result(job_id=job_id, kind=liveness.PLAN, step=step, data=json_safe(data)))
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(stage=f"0 of {chunks} chunks of ≤ {size} points"))
    for index in range(chunks):
        enqueue_grid_chunk(analysis_id, index)
    return "split"


@celery_app.task(name=RUN_GRID_CHUNK_TASK)
def run_grid_chunk(analysis_id: int, index: int) -> str:
    settings = get_settings()
    store = LocalArtifactStore(settings.artifact_dir)
    device = pick_device(settings.device)
    with session_scope() as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None or analysis.status != JobStatus.running.value:
            return "skipped"
        if analysis.cancel_requested:
            return _cancelled(analysis_id)
        [plan_row] = liveness.rows(session, analysis, liveness.PLAN)
        loaded, plan_data = _load(session, analysis, store), plan_row.data
        liveness.claim_chunk(session, analysis, index)
    try:
        tensors, metadata = checkpoint.read(loaded["kept"][(loaded["job_id"], loaded["step"])])
        ctx = context_at(loaded["spec"], loaded["step"], tensors, metadata, device, store.path)
        directions = load_file(str(store.path(plan_data["directions"])))
        names = {k.split("/", 1)[1] for k in directions}
        state = {k: v for k, v in ctx.model.state_dict().items() if k in names}
        plan = GridPlan.restore(plan_data["plan"], directions, state)
        size = plan_data["chunk_points"]
        with _beating(analysis_id, index) as should_stop:
            ctx.should_stop = should_stop
            values = evaluate_points(ctx, plan, plan.points[index * size : (index + 1) * size])
    except ProbeStopped:
        return _cancelled(analysis_id)
    except Exception:
        return _fail(analysis_id, traceback.format_exc(limit=20))
    return _assemble(analysis_id, index, values, plan, plan_data, store)


def _assemble(analysis_id: int, index: int, values: list, plan: GridPlan, plan_data: dict[str, Any], store: LocalArtifactStore) -> str:  # type: ignore[type-arg]
    """Keep this chunk's values; publish the surface so far, or, after the last chunk, the finished one."""
    with session_scope() as session:
        analysis = session.scalars(select(Analysis).where(Analysis.id == analysis_id).with_for_update()).one()
        if analysis.status != JobStatus.running.value:
            return "skipped"
        for row in [*liveness.rows(session, analysis, liveness.CHUNK), *liveness.rows(session, analysis, liveness.CLAIM)]:
            if row.data["index"] == index:
                session.delete(row)  # a redelivered chunk replaces its earlier copy; its claim is done
        session.add(Result(job_id=analysis.job_id, kind=liveness.CHUNK, step=analysis.step, data=json_safe({"analysis_id": analysis_id, "index": index, "values": values})))
        session.flush()
        chunks = liveness.rows(session, analysis, liveness.CHUNK)
        shape = (len(plan.xs), 1 if plan.ys is None else len(plan.ys))
        loss, accuracy, evaluated = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, bool)
        for row in chunks:
            for i, j, value, acc in row.data["values"]:
                loss[i, j] = np.nan if value is None else value
                accuracy[i, j] = np.nan if acc is None else acc
                evaluated[i, j] = True
        has_accuracy = any(row.data["values"] and row.data["values"][0][3] is not None for row in chunks)
        done = len({row.data["index"] for row in chunks})
        document = plan.document(loss, accuracy if has_accuracy else None, evaluated, time.time() - plan_data["started"])
        kind = f"{analysis.kind}_analysis"
        if done < plan_data["chunks"]:
            _publish(session, analysis, kind, {**document, "partial": True, "chunks": plan_data["chunks"]})
            analysis.stage = f"{done} of {plan_data['chunks']} chunks of ≤ {plan_data['chunk_points']} points"
            return "chunk"
        _publish(session, analysis, kind, {**finish(plan, document), "partial": False, "chunks": plan_data["chunks"]})
        for row in [*chunks, *liveness.rows(session, analysis, liveness.PLAN), *liveness.rows(session, analysis, liveness.CLAIM)]:
            session.delete(row)
        analysis.status, analysis.stage, analysis.finished_at = JobStatus.succeeded.value, "done", utcnow()
    return "succeeded"

