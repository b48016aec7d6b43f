"""DbRecorder: what the training loop reports goes to the jobs row, metric chunks, results and artifacts.

Metrics are buffered and written at most once per `flush_seconds`; a background thread beats the heartbeat
and reads the cancel flag, so a slow step never makes a live job look dead. Every write is guarded by the
attempt number: a worker whose job was handed to another worker stops writing at once.
"""

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import select, update

from backend.db import session_scope
from backend.models import Artifact, Job, JobStatus, Result, utcnow
from backend.services import notices
from backend.services.artifacts import ArtifactStore
from backend.services.downsample import json_safe
from backend.services.series import append_points


class DbRecorder:
    def __init__(
        self,
        job_id: int,
        attempt: int,
        store: ArtifactStore,
        heartbeat_interval: float,
        flush_seconds: float = 1.0,
    ) -> None:
        self.job_id, self.attempt, self.store = job_id, attempt, store
        self.heartbeat_interval, self.flush_seconds = heartbeat_interval, flush_seconds
        self._points: dict[str, tuple[list[int], list[float]]] = {}
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

    def progress(self, step: int, total: int, stage: str) -> None:
        self._progress = (step, step / total if total else 1.0, stage)
        self._maybe_flush()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def save_tensors(self, kind: str, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        if kind == "checkpoint":
            # Every point before the checkpoint is written first: a resume from it leaves no gap.
            self.flush()
            if self.lost.is_set():
                return
        stored = self.store.put(safetensors_bytes(tensors, metadata=metadata))
        with session_scope() as session:
            session.add(Artifact(id=stored.id, job_id=self.job_id, kind=kind, step=step, size=stored.size, sha256=stored.sha256))

    def result(self, kind: str, step: int, payload: dict[str, Any]) -> None:
        """A probe's result at a step; it replaces a partial one of the same kind and step (a surface published
        while it was computed), not another whole one (two opposing pairs found by one search)."""
        if self.lost.is_set():
            return
        with session_scope() as session:
            query = select(Result).where(Result.job_id == self.job_id, Result.kind == kind, Result.step == step)
            for row in session.scalars(query):
                if row.data.get("partial"):
                    session.delete(row)
            session.add(Result(job_id=self.job_id, kind=kind, step=step, data=json_safe(payload)))

    # Flushing.

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self.lost.is_set():
            return
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
                    append_points(session, self.job_id, name, np.asarray(steps), np.asarray(vals))
        self._points = {}

    def close(self) -> None:
        self._closing.set()
        self._beater.join()
        self.flush()
