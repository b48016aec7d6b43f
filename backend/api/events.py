"""Server-sent events of one job: `job` (the row when it changes), `metrics` (new points), `result` (a new
result document: its id, kind and step), `analysis` (an analysis of a kept checkpoint, when it changes: its
progress and state), `end`.

The first event, `hello`, gives the last step of each series at subscription time; a client draws the
downsampled series from /metrics (or a view's figures) and appends the points `metrics` events bring after
that, and redraws a view when a `result` of a kind it draws arrives: nothing polls. A stream whose credentials
stop reaching the job's team (token revoked, signed out, removed from the team) is closed within
RECHECK_SECONDS.

All the streams of one job in an API process share one `Feed`: it reads what is new once, when a notice says the
job changed (backend.services.notices, on the broker's Redis) or every FALLBACK_SECONDS without one, and hands
it to every stream, so the database's load does not grow with the number of viewers. Each stream keeps what it
has sent and passes on only what is newer.
"""

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from backend.api.auth import Viewer, still_in_team
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.config import get_settings
from backend.db import UNREACHABLE, get_sessionmaker
from backend.models import Analysis, Job, JobStatus, Result
from backend.schemas import AnalysisOut, JobOut
from backend.services import analyses as liveness
from backend.services import notices
from backend.services.downsample import json_safe
from backend.services.series import read_series, series_names

router = APIRouter(prefix="/jobs", tags=["events"])
log = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # without notices
FALLBACK_SECONDS = 5.0  # with them: a notice lost is a delay, not a gap
RECONNECT_SECONDS = 2.0
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


Batch = list[tuple[str, Any]]


class Feed:
    """One job's reads, shared by its streams in this process. It starts from its first stream's snapshot."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Batch]] = set()
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.seen: Seen | None = None
        self.task: asyncio.Task[None] | None = None


class Hub:
    """The feeds of this API process, woken by job change notices from the broker's Redis when it has one."""

    def __init__(self, redis_url: str | None) -> None:
        self.url = redis_url
        self.feeds: dict[int, Feed] = {}
        self.listening = False
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.url is not None:
            self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        tasks = [t for t in (self._listener, *(f.task for f in self.feeds.values())) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        assert self.url is not None
        while True:
            client = aioredis.Redis.from_url(self.url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(notices.CHANNEL)
                    self.listening = True
                    async for message in pubsub.listen():
                        if message["type"] == "message" and (feed := self.feeds.get(int(message["data"]))) is not None:
                            feed.wake.set()
            except (aioredis.RedisError, OSError, ValueError) as exc:
                log.warning("job notices unavailable (%s): event streams read every %s s", exc, POLL_SECONDS)
            finally:
                self.listening = False
                await client.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

    def subscribe(self, job_id: int) -> tuple[Feed, asyncio.Queue[Batch]]:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed()
            feed.task = asyncio.create_task(self._run(job_id, feed))
        queue: asyncio.Queue[Batch] = asyncio.Queue()
        feed.queues.add(queue)
        return feed, queue

    def unsubscribe(self, job_id: int, queue: asyncio.Queue[Batch]) -> None:
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        feed.queues.discard(queue)
        if not feed.queues:
            del self.feeds[job_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _run(self, job_id: int, feed: Feed) -> None:
        await feed.ready.wait()
        assert feed.seen is not None
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(feed.wake.wait(), FALLBACK_SECONDS if self.listening else POLL_SECONDS)
            feed.wake.clear()
            seen = copy.deepcopy(feed.seen)  # taken up only once a read got through: a failed one loses nothing
            try:
                batch = await run_in_threadpool(_poll, job_id, seen)
            except UNREACHABLE as exc:
                log.warning("job %s's stream waits for the database: %s", job_id, str(exc).splitlines()[0])
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            feed.seen = seen
            for queue in feed.queues:
                queue.put_nowait(batch)


def _newer(batch: Batch, seen: Seen) -> Batch:
    """What of a feed's batch this stream has not sent yet (it may have subscribed after the feed read some)."""
    out: Batch = []
    for event, data in batch:
        if event == "metrics":
            fresh = {}
            for name, points in data.items():
                after = seen.steps.get(name, -1)
                keep = [i for i, step in enumerate(points["steps"]) if step > after]
                if keep:
                    fresh[name] = {"steps": [points["steps"][i] for i in keep], "values": [points["values"][i] for i in keep]}
                    seen.steps[name] = points["steps"][keep[-1]]
            if fresh:
                out.append((event, fresh))
        elif event == "result":
            if data["id"] > seen.result:
                seen.result = data["id"]
                out.append((event, data))
        elif event == "analysis":
            if seen.analyses.get(data["id"]) != data:
                seen.analyses[data["id"]] = data
                out.append((event, data))
        else:
            out.append((event, data))
    return out


def _hub(app: Any) -> Hub:
    """The app's hub, started with its first stream (on the app's event loop)."""
    if getattr(app.state, "hub", None) is None:
        app.state.hub = Hub(get_settings().broker_redis_url)
        app.state.hub.start()
    return app.state.hub


async def stop_hub(app: Any) -> None:
    if (hub := getattr(app.state, "hub", None)) is not None:
        app.state.hub = None
        await hub.stop()


async def _stream(request: Request, job_id: int, team_id: int) -> AsyncIterator[dict[str, str]]:
    hub = _hub(request.app)
    feed, queue = hub.subscribe(job_id)  # first: nothing the feed reads from now on is missed
    getter: asyncio.Future[Batch] | None = None
    try:
        seen = await run_in_threadpool(_seen, job_id)
        if feed.seen is None:
            feed.seen = copy.deepcopy(seen)
            feed.ready.set()
        feed.wake.set()  # the job's row now, for this stream's first `job` event
        yield {"event": "hello", "data": json.dumps({"job_id": job_id, "last_steps": seen.steps, "last_result": seen.result})}
        last: dict[str, Any] | None = None
        checked = time.monotonic()
        while not await request.is_disconnected():
            if time.monotonic() - checked >= RECHECK_SECONDS:
                with suppress(*UNREACHABLE):  # (checked again once the database is back)
                    if not await run_in_threadpool(_allowed, request, team_id):
                        return
                checked = time.monotonic()
            # A getter kept across timeouts: cancelling one could drop the batch it had just taken.
            getter = getter or asyncio.ensure_future(queue.get())
            if not (await asyncio.wait({getter}, timeout=POLL_SECONDS))[0]:
                continue
            batch, getter = getter.result(), None
            for event, data in _newer(batch, seen):
                if event == "job":
                    if data == last:
                        continue
                    last = data
                yield {"event": event, "data": json.dumps(data)}
            if last is not None and JobStatus(last["status"]).terminal and not _unfinished(seen):
                yield {"event": "end", "data": json.dumps({"status": last["status"]})}
                return
    finally:
        if getter is not None:
            getter.cancel()
        hub.unsubscribe(job_id, queue)


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
    session.close()  # its connection back to the pool now, not when the stream ends: a pool is not sized for viewers
    return EventSourceResponse(_stream(request, job_id, who.team_id), ping=15)
