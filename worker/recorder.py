"""DbRecorder: what the training loop reports goes to the jobs row, metric chunks, results and artifacts.

Metrics are buffered and written at most once per `flush_seconds`; a background thread beats the heartbeat
and reads the cancel flag, so a slow step never makes a live job look dead. Every write is guarded by the
attempt number: a worker whose job was handed to another worker stops writing at once.

Checkpoints (their files already in the store) and results are written with the next flush, after the points
before them, in one transaction: a resume from a checkpoint leaves no gap. While the database is away, training
goes on: points and rows stay buffered (up to `max_buffered` points or MAX_PENDING_ROWS rows; past that the loop
waits) and the flush is retried with backoff. Once it is back, everything buffered is written and an `outage`
result says for how long it was away. Past the outage limit the loop stops with DatabaseUnreachable, which
becomes the job's error.
"""

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.db import UNREACHABLE, session_scope
from backend.models import Artifact, Job, JobStatus, Result, utcnow
from backend.services import flush_latency, notices
from backend.services.artifacts import ArtifactStore
from backend.services.downsample import json_safe
from backend.services.series import append_points
from worker.outage import Outage

MAX_BUFFERED_POINTS = 2_000_000
MAX_PENDING_ROWS = 1_000


class DbRecorder:
    def __init__(
        self,
        job_id: int,
        attempt: int,
        store: ArtifactStore,
        heartbeat_interval: float,
        flush_seconds: float = 1.0,
        outage_seconds: float = 120.0,
        max_buffered: int = MAX_BUFFERED_POINTS,
    ) -> None:
        self.job_id, self.attempt, self.store = job_id, attempt, store
        self.heartbeat_interval, self.flush_seconds, self.max_buffered = heartbeat_interval, flush_seconds, max_buffered
        self._points: dict[str, tuple[list[int], list[float]]] = {}
        self._buffered = 0
        self._rows: list[Callable[[Session], None]] = []  # artifacts and results, written with the next flush
        self._outage = Outage(outage_seconds, f"job {job_id}")
        self._outage_from: int | None = None
        self._progress: tuple[int, float, str] | None = None
        self._last_flush = time.monotonic()
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._closing = threading.Event()
        self._beater = threading.Thread(target=self._beat, name=f"heartbeat-job{job_id}", daemon=True)
        self._beater.start()

    def _ours(self):  # type: ignore[no-untyped-def]
        return (Job.id == self.job_id) & (Job.status == JobStatus.running.value) & (Job.attempts == self.attempt)

    def _beat(self) -> None:
        while not self._closing.wait(self.heartbeat_interval):
            try:
                with session_scope() as session:
                    alive = session.execute(update(Job).where(self._ours()).values(heartbeat_at=utcnow())).rowcount
                    cancel = session.get(Job, self.job_id).cancel_requested  # type: ignore[union-attr]
            except Exception:  # a database hiccup: try again next beat
                continue
            if not alive:
                self.lost.set()
            if cancel:
                self.cancelled.set()

    # The Recorder interface of worker.training.loop.

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        # No flush check here: the loop reports progress once per step, and that checks.
        for name, value in metrics.items():
            steps, values = self._points.setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value))
        self._buffered += len(metrics)

    def progress(self, step: int, total: int, stage: str) -> None:
        self._progress = (step, step / total if total else 1.0, stage)
        self._maybe_flush()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def save_tensors(self, kind: str, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        if self.lost.is_set():
            return
        stored = self.store.put(safetensors_bytes(tensors, metadata=metadata))

        def add(session: Session) -> None:  # (merged: a retried flush whose first commit landed writes it once)
            session.merge(Artifact(id=stored.id, job_id=self.job_id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))

        self._rows.append(add)
        self.flush()

    def result(self, kind: str, step: int, payload: dict[str, Any]) -> None:
        """A probe's result at a step; it replaces a partial one of the same kind and step (a surface published
        while it was computed), not another whole one (two opposing pairs found by one search)."""
        if self.lost.is_set():
            return

        data = json_safe(payload)

        def replace(session: Session) -> None:
            query = select(Result).where(Result.job_id == self.job_id, Result.kind == kind, Result.step == step)
            for row in session.scalars(query):
                if row.data == data:
                    return  # written by a retried flush whose first commit landed
                if row.data.get("partial"):
                    session.delete(row)
            session.add(Result(job_id=self.job_id, kind=kind, step=step, data=data))

        self._rows.append(replace)
        self.flush()

    # Flushing.

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Write the buffered points and progress; without `wait`, an outage only keeps them for a later try."""
        self._last_flush = time.monotonic()
        if self.lost.is_set():
            return
        points, step = self._buffered, self._progress[0] if self._progress else 0
        if wait or self._buffered >= self.max_buffered or len(self._rows) >= MAX_PENDING_ROWS:
            self._outage.persist(self._write)
        elif self._outage.due():
            try:
                self._write()
            except UNREACHABLE as exc:
                self._outage_from = step if self._outage_from is None else self._outage_from
                self._outage.failed(exc)
                return
            self._outage.back()
        else:
            return
        if (seconds := self._outage.report()) is not None:
            start, self._outage_from = self._outage_from, None
            self.result(
                "outage",
                step,
                {"seconds": round(seconds, 3), "from_step": step if start is None else start, "to_step": step, "points": points},
            )

    def _write(self) -> None:
        started = time.perf_counter()
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if self._progress is not None:
            values.update(step=self._progress[0], progress=self._progress[1], stage=self._progress[2])
        with session_scope() as session:
            if not session.execute(update(Job).where(self._ours()).values(**values)).rowcount:
                self.lost.set()
                return
            notices.changed(session, self.job_id)
            for name, (steps, vals) in self._points.items():
                if steps:
                    # A commit whose answer was lost with the connection may have landed: never write a step twice.
                    append_points(session, self.job_id, name, np.asarray(steps), np.asarray(vals), only_new=True)
            for write in self._rows:  # after the points before them: a resume from a checkpoint leaves no gap
                write(session)
        flush_latency.observe(time.perf_counter() - started)
        self._points, self._buffered, self._rows = {}, 0, []

    def close(self) -> None:
        """Stop beating and write what is buffered (waiting out an outage up to its limit, unless it was passed)."""
        self._closing.set()
        self._beater.join()
        if not self._outage.gave_up:
            self.flush(wait=True)
