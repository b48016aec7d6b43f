"""Analyses of kept checkpoints as tasks: run_analysis(id) computes one in this worker, or plans a large grid
and splits it into run_grid_chunk(id, k) tasks that any idle worker takes; the worker that finishes the last
chunk assembles the surface. Every task is safe to deliver twice (a lost worker's chunk is simply redone), and
every state change goes through backend.services.analyses (guarded by the attempt that owns the analysis)."""

import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from celery import Task
from pydantic import TypeAdapter
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import session_scope
from backend.models import Analysis, Artifact, Job, JobStatus, Result
from backend.queue import RUN_ANALYSIS_TASK, RUN_GRID_CHUNK_TASK, enqueue_grid_chunk, get_celery
from backend.services import analyses as lifecycle
from backend.services.artifacts import ArtifactStore, get_store
from backend.services.downsample import json_safe
from backend.spec import CheckpointAnalysis, JobSpec
from dynascope.probes import Calls, ProbeStopped
from dynascope.probes.grids import GridPlan, evaluate_points, finish
from dynascope.results import Document
from worker.outage import or_requeue
from worker.training import checkpoint
from worker.training.analyses import ANALYSES, Site, analyze, plan, run_at
from worker.training.models import pick_device

celery_app = get_celery()
S = JobStatus


class KeptCheckpoints(Mapping[tuple[int, int], Path]):
    """The kept checkpoints by (job id, step), each one's file fetched from the store only when it is read: from an
    object store, an analysis of one checkpoint downloads that one, not every checkpoint the job kept."""

    def __init__(self, ids: dict[tuple[int, int], str], path: Callable[[str], Path]) -> None:
        self.ids, self.path = ids, path

    def __getitem__(self, at: tuple[int, int]) -> Path:
        return self.path(self.ids[at])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Loaded:
    """An analysis' row, read once: what it asks for, of which job, at which checkpoint, and the files kept."""

    spec: JobSpec
    request: Any
    job_id: int
    step: int
    kept: KeptCheckpoints
    specs: dict[int, JobSpec]  # of this job and of any other whose checkpoint the analysis reads
    uploads: Callable[[str], Path]

    @property
    def kind(self) -> str:
        return f"{self.request.kind}_analysis"

    def site(self) -> Site:
        if (self.job_id, self.step) not in self.kept:
            raise FileNotFoundError(f"job {self.job_id} has no checkpoint at step {self.step} any more")
        tensors, self.metadata = checkpoint.read(self.kept[(self.job_id, self.step)])
        return Site(self.job_id, self.step, tensors, self.kept, self.specs, self.uploads)


def _load(session: Session, analysis: Analysis, store: ArtifactStore) -> Loaded:
    job = session.get(Job, analysis.job_id)
    assert job is not None
    jobs = {job.id} | ({analysis.params["to_job"]} if analysis.params.get("to_job") else set())
    query = select(Artifact).where(Artifact.kind == "checkpoint", Artifact.job_id.in_(jobs))
    kept = KeptCheckpoints({(a.job_id, a.step): a.id for a in session.scalars(query)}, store.path)
    request = TypeAdapter(CheckpointAnalysis).validate_python(analysis.params)
    specs = {i: JobSpec.model_validate(row.spec) for i in jobs if (row := session.get(Job, i)) is not None}
    return Loaded(specs[job.id], request, job.id, analysis.step, kept, specs, store.path)


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
                    if lifecycle.beat(session, analysis_id, chunk):
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


def _publish(session: Session, analysis: Analysis, kind: str, data: dict[str, Any]) -> None:
    """The analysis' result document, replacing an earlier (partial) one."""
    for row in lifecycle.rows(session, analysis, kind):
        session.delete(row)
    session.add(Result(job_id=analysis.job_id, kind=kind, step=analysis.step, data=json_safe({**data, "analysis_id": analysis.id})))


def _keep(session: Session, store: ArtifactStore, analysis_id: int, job_id: int, step: int, kind: str, tensors, meta) -> str:  # type: ignore[no-untyped-def]
    stored = store.put(safetensors_bytes(tensors, metadata={**meta, "analysis_id": str(analysis_id)}))
    session.add(Artifact(id=stored.id, job_id=job_id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))
    return stored.id


class Owned:
    """A worker's writes to the analysis it claimed, each one only while that attempt still owns it."""

    def __init__(self, analysis_id: int, attempt: int | None) -> None:
        self.analysis_id, self.attempt = analysis_id, attempt

    def mine(self, session: Session) -> Analysis | None:
        analysis = session.get(Analysis, self.analysis_id)
        running = analysis is not None and analysis.status == S.running.value
        return analysis if running and (self.attempt is None or analysis.attempts == self.attempt) else None

    def stage(self, text: str) -> None:
        with session_scope() as session:
            lifecycle.set_stage(session, self.analysis_id, self.attempt, text)

    def end(self, new: JobStatus, **values: Any) -> str:
        conditions = [lifecycle.ours(self.attempt)] if self.attempt is not None else []
        with session_scope() as session:
            lifecycle.transition(session, self.analysis_id, new, *conditions, only_from=[S.running.value], stage=new.value, **values)
        return new.value

    def publish(self, kind: str, document: Document | dict[str, Any]) -> None:
        data = document.recorded() if isinstance(document, Document) else document
        with session_scope() as session:
            if (analysis := self.mine(session)) is not None:
                _publish(session, analysis, kind, data)


@celery_app.task(name=RUN_ANALYSIS_TASK, bind=True)
def run_analysis(self: Task, analysis_id: int) -> str:
    return or_requeue(self, lambda: _run_analysis(analysis_id))


def _run_analysis(analysis_id: int) -> str:
    settings = get_settings()
    store = get_store(settings)
    device = pick_device(settings.device)
    with session_scope() as session:
        attempt = lifecycle.claim(session, analysis_id)
        if attempt is None:
            return "skipped"
        loaded = _load(session, session.get(Analysis, analysis_id), store)
    owned = Owned(analysis_id, attempt)
    try:
        site = loaded.site()
        if ANALYSES[loaded.request.kind].points(loaded.request) > settings.grid_chunk_points:
            with _beating(analysis_id):
                return _split(owned, loaded, site, device, store, settings.grid_chunk_points)
        with _beating(analysis_id) as should_stop:
            run = run_at(loaded.spec, loaded.step, site.tensors, loaded.metadata, device, store.path)
            calls = Calls(report=owned.stage, should_stop=should_stop, publish=lambda doc: owned.publish(loaded.kind, doc))
            done = analyze(loaded.request, run, site, calls)
    except ProbeStopped:
        return owned.end(S.cancelled)
    except Exception:
        return owned.end(S.failed, error=traceback.format_exc(limit=20))
    with session_scope() as session:
        analysis = owned.mine(session)
        if analysis is None:
            return "lost"  # another attempt owns it now; write nothing
        _publish(session, analysis, loaded.kind, done.result)
        for kind, (tensors, meta) in done.artifacts.items():
            _keep(session, store, analysis_id, loaded.job_id, loaded.step, kind, tensors, meta)
        lifecycle.transition(session, analysis_id, S.succeeded, lifecycle.ours(attempt), stage="done")
    return "succeeded"


def _split(owned: Owned, loaded: Loaded, site: Site, device: torch.device, store: ArtifactStore, size: int) -> str:
    """Plan the grid here, keep its directions as an artifact, and queue one task per chunk of points."""
    run = run_at(loaded.spec, loaded.step, site.tensors, loaded.metadata, device, store.path)
    grid = plan(loaded.request, run, site, Calls(report=owned.stage))
    chunks = -(-len(grid.points) // size)
    directions, meta = grid.direction_tensors()
    kind = ANALYSES[loaded.request.kind].directions
    assert kind is not None
    with session_scope() as session:
        if owned.mine(session) is None:
            return "lost"
        stored = _keep(session, store, owned.analysis_id, loaded.job_id, loaded.step, kind, directions, meta)
        data = {"analysis_id": owned.analysis_id, "plan": grid.spec(), "directions": stored, "chunks": chunks, "chunk_points": size}
        session.add(Result(job_id=loaded.job_id, kind=lifecycle.PLAN, step=loaded.step, data=json_safe({**data, "started": time.time()})))
        lifecycle.set_stage(session, owned.analysis_id, owned.attempt, f"0 of {chunks} chunks of ≤ {size} points")
    for index in range(chunks):
        enqueue_grid_chunk(owned.analysis_id, index)
    return "split"


@celery_app.task(name=RUN_GRID_CHUNK_TASK, bind=True)
def run_grid_chunk(self: Task, analysis_id: int, index: int) -> str:
    return or_requeue(self, lambda: _run_grid_chunk(analysis_id, index))


def _run_grid_chunk(analysis_id: int, index: int) -> str:
    settings = get_settings()
    store = get_store(settings)
    device = pick_device(settings.device)
    owned = Owned(analysis_id, None)  # chunks are idempotent: any attempt's copy of one is as good
    with session_scope() as session:
        analysis = owned.mine(session)
        if analysis is None:
            return "skipped"
        if analysis.cancel_requested:
            return owned.end(S.cancelled)
        [plan_row] = lifecycle.rows(session, analysis, lifecycle.PLAN)
        loaded, plan_data = _load(session, analysis, store), plan_row.data
        lifecycle.claim_chunk(session, analysis, index)
    try:
        site = loaded.site()
        run = run_at(loaded.spec, loaded.step, site.tensors, loaded.metadata, device, store.path)
        directions = load_file(str(store.path(plan_data["directions"])))
        names = {k.split("/", 1)[1] for k in directions}
        grid = GridPlan.restore(plan_data["plan"], directions, {k: v for k, v in run.model.state_dict().items() if k in names})
        size = plan_data["chunk_points"]
        with _beating(analysis_id, index) as should_stop:
            values = evaluate_points(run, grid, grid.points[index * size : (index + 1) * size], should_stop)
    except ProbeStopped:
        return owned.end(S.cancelled)
    except Exception:
        return owned.end(S.failed, error=traceback.format_exc(limit=20))
    return _assemble(owned, loaded.kind, index, values, grid, plan_data)


def _assemble(owned: Owned, kind: str, index: int, values: list, grid: GridPlan, plan_data: dict[str, Any]) -> str:  # type: ignore[type-arg]
    """Keep this chunk's values; publish the surface so far, or, after the last chunk, the finished one."""
    with session_scope() as session:
        analysis = session.scalars(select(Analysis).where(Analysis.id == owned.analysis_id).with_for_update()).one()
        if analysis.status != S.running.value:
            return "skipped"
        for row in [*lifecycle.rows(session, analysis, lifecycle.CHUNK), *lifecycle.rows(session, analysis, lifecycle.CLAIM)]:
            if row.data["index"] == index:
                session.delete(row)  # a redelivered chunk replaces its earlier copy; its claim is done
        chunk = {"analysis_id": owned.analysis_id, "index": index, "values": values}
        session.add(Result(job_id=analysis.job_id, kind=lifecycle.CHUNK, step=analysis.step, data=json_safe(chunk)))
        session.flush()
        chunks = lifecycle.rows(session, analysis, lifecycle.CHUNK)
        done, total = len({row.data["index"] for row in chunks}), plan_data["chunks"]
        document = _surface(grid, chunks, time.time() - plan_data["started"], partial=done < total)
        document.chunks = total
        if done < total:
            _publish(session, analysis, kind, document.recorded())
            lifecycle.set_stage(session, analysis.id, None, f"{done} of {total} chunks of ≤ {plan_data['chunk_points']} points")
            return "chunk"
        _publish(session, analysis, kind, finish(grid, document).recorded())
        for row in [*chunks, *lifecycle.rows(session, analysis, lifecycle.PLAN), *lifecycle.rows(session, analysis, lifecycle.CLAIM)]:
            session.delete(row)
        lifecycle.transition(session, analysis.id, S.succeeded, stage="done")
    return "succeeded"


def _surface(grid: GridPlan, chunks: list[Result], seconds: float, partial: bool):  # type: ignore[no-untyped-def]
    """The grid's document from the chunks computed so far (gaps where none is yet)."""
    shape = (len(grid.xs), 1 if grid.ys is None else len(grid.ys))
    loss, accuracy, evaluated = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, bool)
    for row in chunks:
        for i, j, value, acc in row.data["values"]:
            loss[i, j] = np.nan if value is None else value
            accuracy[i, j] = np.nan if acc is None else acc
            evaluated[i, j] = True
    has_accuracy = any(row.data["values"] and row.data["values"][0][3] is not None for row in chunks)
    return grid.document(loss, accuracy if has_accuracy else None, evaluated, seconds, partial=partial)
