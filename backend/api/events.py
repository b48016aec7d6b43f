"""Server-sent events of one job: `job` (the row when it changes), `metrics` (new points), `result` (a new
result document: its id, kind and step), `analysis` (an analysis of a kept checkpoint, when it changes: its
progress and state), `end`.

The first event, `hello`, gives the last step of each series at subscription time; a client draws the
downsampled series from /metrics (or a view's figures) and appends the points `metrics` events bring after
that, and redraws a view when a `result` of a kind it draws arrives: nothing polls. A stream whose credentials
stop reaching the job's team (token revoked, signed out, removed from the team) is closed within
RECHECK_SECONDS.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from backend.api.auth import Viewer, still_in_team
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.config import get_settings
from backend.db import get_sessionmaker
from backend.models import Analysis, Job, JobStatus, Result
from backend.schemas import AnalysisOut, JobOut
from backend.services import analyses as liveness
from backend.services.downsample import json_safe
from backend.services.series import read_series, series_names

router = APIRouter(prefix="/jobs", tags=["events"])
POLL_SECONDS = 0.5
RECHECK_SECONDS = 5.0


def _allowed(request: Request, team_id: int) -> bool:
    with get_sessionmaker()() as session:
        return still_in_team(request, session, get_settings().secret_key.get_secret_value(), team_id)


INTERNAL = (liveness.PLAN, liveness.CHUNK, liveness.CLAIM)  # a split grid's bookkeeping, not results


class Seen:
    """What a stream has sent: each series' last step, the newest result id, each analysis as last sent."""

    def __init__(self, session: Session, job_id: int) -> None:
        self.steps: dict[str, int] = {}
        for name, (steps, _) in read_series(session, job_id, series_names(session, job_id)).items():
            if len(steps):
                self.steps[name] = int(steps[-1])
        self.result = session.scalar(select(func.max(Result.id)).where(Result.job_id == job_id)) or 0
        self.analyses: dict[int, dict[str, Any]] = {a["id"]: a for a in _analyses(session, job_id)}


def _seen(job_id: int) -> Seen:
    with get_sessionmaker()() as session:
        return Seen(session, job_id)


def _analyses(session: Session, job_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Analysis).where(Analysis.job_id == job_id).order_by(Analysis.id))
    return [AnalysisOut.model_validate(a).model_dump(mode="json") for a in rows]


def _poll(job_id: int, seen: Seen) -> list[tuple[str, Any]]:
    """The events since the last poll, in the order a client applies them."""
    events: list[tuple[str, Any]] = []
    with get_sessionmaker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        new: dict[str, Any] = {}
        for name in series_names(session, job_id):
            steps, values = read_series(session, job_id, [name], after_step=seen.steps.get(name, -1))[name]
            if len(steps):
                new[name] = {"steps": steps.tolist(), "values": json_safe(values)}
                seen.steps[name] = int(steps[-1])
        if new:
            events.append(("metrics", new))
        query = select(Result.id, Result.kind, Result.step).where(Result.job_id == job_id, Result.id > seen.result).order_by(Result.id)
        for row in session.execute(query):
            seen.result = row.id
            if row.kind not in INTERNAL:
                events.append(("result", {"id": row.id, "kind": row.kind, "step": row.step}))
        for analysis in _analyses(session, job_id):
            if seen.analyses.get(analysis["id"]) != analysis:
                seen.analyses[analysis["id"]] = analysis
                events.append(("analysis", analysis))
        events.append(("job", JobOut.model_validate(job).model_dump(mode="json", exclude={"spec", "duration_s"})))
    return events


async def _stream(request: Request, job_id: int, team_id: int) -> AsyncIterator[dict[str, str]]:
    seen = await run_in_threadpool(_seen, job_id)
    yield {"event": "hello", "data": json.dumps({"job_id": job_id, "last_steps": seen.steps, "last_result": seen.result})}
    last: dict[str, Any] | None = None
    checked = time.monotonic()
    while not await request.is_disconnected():
        if time.monotonic() - checked >= RECHECK_SECONDS:
            if not await run_in_threadpool(_allowed, request, team_id):
                return
            checked = time.monotonic()
        for event, data in await run_in_threadpool(_poll, job_id, seen):
            if event == "job":
                if data == last:
                    continue
                last = data
            yield {"event": event, "data": json.dumps(data)}
        if last is not None and JobStatus(last["status"]).terminal and not _unfinished(seen):
            yield {"event": "end", "data": json.dumps({"status": last["status"]})}
            return
        await asyncio.sleep(POLL_SECONDS)


def _unfinished(seen: Seen) -> bool:
    """An analysis still queued or running: a finished job's stream stays open for it."""
    return any(not JobStatus(a["status"]).terminal for a in seen.analyses.values())


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "hello, job, metrics, result, analysis, end events"}},
)
def job_events(job_id: RowId, request: Request, session: SessionDep, who: Viewer) -> EventSourceResponse:
    get_job_or_404(session, job_id, who.team_id)
    assert who.team_id is not None
    return EventSourceResponse(_stream(request, job_id, who.team_id), ping=15)
