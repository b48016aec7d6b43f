"""Operator metrics in Prometheus' text format: GET /api/v1/operator/metrics with `Authorization: Bearer
<DYNASCOPE_METRICS_TOKEN>` (off, 404, while that setting is empty). Jobs and analyses by state, the broker queue's
depth, the age of the last heartbeat of each worker's running jobs, the workers' recorder flush latencies (from the
broker), and this API process's request latencies by route (from `RequestTimer`) and SQL statements."""

import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import security
from backend.api import API_PREFIX
from backend.api.deps import SessionDep, SettingsDep
from backend.config import Settings
from backend.models import Analysis, Job, JobStatus, utcnow
from backend.queue import JOB_QUEUE, get_celery
from backend.services import flush_latency

router = APIRouter(prefix="/operator", tags=["operator"])
REGISTRY = CollectorRegistry()
LATENCY = Histogram(
    "dynascope_request_duration_seconds",
    "Time to answer an API request, by method, route and status class",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


STATEMENTS = Counter("dynascope_db_statements", "SQL statements this API process sent to the database", registry=REGISTRY)


@event.listens_for(Engine, "before_cursor_execute")
def _count_statement(*_: Any) -> None:
    STATEMENTS.inc()


class RequestTimer:
    """Times every HTTP request into LATENCY, labelled by its route's template (never the raw path: bounded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            LATENCY.labels(scope["method"], _template(scope), f"{status[0] // 100}xx").observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The matched route's path template; an API route's is its router's, without the prefix it is served under."""
    route = getattr(scope.get("route"), "path", None)
    if route is None:
        return "unmatched"
    return f"{API_PREFIX}{route}" if scope["path"].startswith(f"{API_PREFIX}/") and not route.startswith(API_PREFIX) else route


class _State(Collector):
    """What the database and the broker hold now, read at each scrape."""

    def __init__(self, session: Any, settings: Settings) -> None:
        self.session, self.settings = session, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, model, what in (("jobs", Job, "Jobs"), ("analyses", Analysis, "Analyses of kept checkpoints")):
            family = GaugeMetricFamily(f"dynascope_{name}", f"{what} by state", labels=["status"])
            counts = dict(self.session.execute(select(model.status, func.count()).group_by(model.status)).all())
            for status in JobStatus:
                family.add_metric([status.value], counts.get(status.value, 0))
            yield family
        beats = GaugeMetricFamily(
            "dynascope_worker_heartbeat_age_seconds", "Seconds since the newest heartbeat of a worker's running jobs", labels=["worker"]
        )
        now = utcnow()
        newest = select(Job.worker_host, func.max(Job.heartbeat_at)).where(Job.status == JobStatus.running.value, Job.source == "server")
        for worker, beat in self.session.execute(newest.group_by(Job.worker_host)).all():
            if worker and beat:
                beats.add_metric([worker], max(0.0, (now - beat).total_seconds()))
        yield beats
        if (depth := _queue_depth(self.settings)) is not None:
            yield GaugeMetricFamily("dynascope_queue_depth", "Tasks waiting in the broker's job queue", value=depth)
        if (flushes := flush_latency.family()) is not None:
            yield flushes


def _queue_depth(settings: Settings) -> int | None:
    """The broker's queue length (Redis: the queue's list), or None when the broker cannot be asked."""
    if not settings.broker_url:
        return None
    try:
        with get_celery().connection_for_read() as connection:
            return int(connection.default_channel.client.llen(JOB_QUEUE))
    except Exception:  # an unreachable broker is a fact to show elsewhere, not a failed scrape
        return None


def _metrics_token(settings: SettingsDep, authorization: Annotated[str, Header(description="Bearer <metrics token>")] = "") -> None:
    """The operator's metrics token, not an account's: Prometheus has none."""
    expected = settings.metrics_token.get_secret_value()
    if not expected:
        raise HTTPException(404, detail="operator metrics are off: set DYNASCOPE_METRICS_TOKEN to turn them on")
    if not security.same(authorization, f"Bearer {expected}"):
        raise HTTPException(401, detail="operator metrics need Authorization: Bearer <DYNASCOPE_METRICS_TOKEN>")


_metrics_token.authorization = "operator metrics token"  # type: ignore[attr-defined]


@router.get(
    "/metrics",
    dependencies=[Depends(_metrics_token)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def operator_metrics(session: SessionDep, settings: SettingsDep) -> Response:
    """For Prometheus: jobs and analyses by state, queue depth, worker heartbeat ages, request latencies."""
    registry = CollectorRegistry()
    registry.register(_State(session, settings))
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
