"""Server-sent events of one job: `job` (the row when it changes), `metrics` (new points), `end`.

The first event, `hello`, gives the last step of each series at subscription time; a client draws the
downsampled series from /metrics and appends the points `metrics` events bring after that. A stream whose
credentials stop reaching the job's team (token revoked, signed out, removed from the team) is closed within
RECHECK_SECONDS.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from backend.api.auth import Viewer, still_in_team
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.config import get_settings
from backend.db import get_sessionmaker
from backend.models import Job, JobStatus
from backend.schemas import JobOut
from backend.services.downsample import json_safe
from backend.services.series import read_series, series_names

router = APIRouter(prefix="/jobs", tags=["events"])
POLL_SECONDS = 0.5
RECHECK_SECONDS = 5.0


def _allowed(request: Request, team_id: int) -> bool:
    with get_sessionmaker()() as session:
        return still_in_team(request, session, get_settings().secret_key.get_secret_value(), team_id)


def _poll(job_id: int, sent: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    with get_sessionmaker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        snapshot = JobOut.model_validate(job).model_dump(mode="json", exclude={"spec", "duration_s"})
        new: dict[str, Any] = {}
        names = series_names(session, job_id)
        for name in names:
            after = sent.get(name, -1)
            steps, values = read_series(session, job_id, [name], after_step=after)[name]
            if len(steps):
                new[name] = {"steps": steps.tolist(), "values": json_safe(values)}
                sent[name] = int(steps[-1])
        return snapshot, new


def _baseline(job_id: int) -> dict[str, int]:
    with get_sessionmaker()() as session:
        out = {}
        for name, (steps, _) in read_series(session, job_id, series_names(session, job_id)).items():
            if len(steps):
                out[name] = int(steps[-1])
        return out


async def _stream(request: Request, job_id: int, team_id: int) -> AsyncIterator[dict[str, str]]:
    sent = await run_in_threadpool(_baseline, job_id)
    yield {"event": "hello", "data": json.dumps({"job_id": job_id, "last_steps": sent})}
    last: dict[str, Any] | None = None
    checked = time.monotonic()
    while not await request.is_disconnected():
        if time.monotonic() - checked >= RECHECK_SECONDS:
            if not await run_in_threadpool(_allowed, request, team_id):
                return
            checked = time.monotonic()
        snapshot, new = await run_in_threadpool(_poll, job_id, sent)
        if new:
            yield {"event": "metrics", "data": json.dumps(new)}
        if snapshot != last:
            yield {"event": "job", "data": json.dumps(snapshot)}
            last = snapshot
        if JobStatus(snapshot["status"]).terminal:
            yield {"event": "end", "data": json.dumps({"status": snapshot["status"]})}
            return
        await asyncio.sleep(POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "hello, job, metrics, end events"}},
)
def job_events(job_id: RowId, request: Request, session: SessionDep, who: Viewer) -> EventSourceResponse:
    get_job_or_404(session, job_id, who.team_id)
    assert who.team_id is not None
    return EventSourceResponse(_stream(request, job_id, who.team_id), ping=15)
