"""create_app(): the API under /api/v1, the reaper, and the static dashboard."""

import asyncio
import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import queue
from backend.api import (
    API_PREFIX,
    account,
    analyses,
    artifacts,
    compare,
    datasets,
    events,
    exports,
    figures,
    health,
    jobs,
    landscapes,
    metrics,
    operator,
    reports,
    results,
    runs,
    specs,
    sweeps,
    table,
    teams,
    tokens,
)
from backend.api.events import stop_hub
from backend.api.operator import RequestTimer
from backend.api.results import DOCUMENTS
from backend.config import get_settings
from backend.db import UNREACHABLE, session_scope
from backend.schemas import ErrorOut
from backend.services.analyses import reap_stale_analyses
from backend.services.jobs import reap_stale_jobs
from backend.spec import ANALYSIS_KINDS, JobSpec

log = logging.getLogger(__name__)
# What any route may answer besides its own success and 422 (documented so that clients and fuzzers know).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text, "content": {"application/json": {}}}  # JSON, also on HTML and file routes
    for code, text in (
        (400, "a Host header not on the allow-list"),
        (401, "not signed in, or an unknown or revoked token"),
        (403, "the role in this team does not allow it, or a missing CSRF token"),
        (404, "no such row in this team"),
        (409, "conflicts with the current state"),
        (413, "the body is over a limit (named in the message)"),
        (422, "invalid input: each item of detail names its field in loc"),
        (429, "over a quota or rate limit (named in the message)"),
        (503, "the job queue or the database is unreachable (Retry-After says when to try again)"),
    )
}
FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"


class BodyLimitMiddleware:
    """413 for bodies over the limit, counted while streaming (a lying Content-Length does not help)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: re.Pattern[str] | None = None) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and self.exempt.fullmatch(scope["path"])):  # (their own, larger limit)
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = f'{{"detail":"request body over the limit of {self.max_bytes} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    # Scripts only from this server, never inline; 'unsafe-eval' because plotly.js builds its WebGL traces
    # (the 3-D surface) with the Function constructor. Plotly injects styles, and exports images as data: URLs.
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        b"font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}  # a route may set its own CSP
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


DATABASE_RETRY_AFTER = 5  # seconds


async def _database_away(_: Request, exc: Exception) -> JSONResponse:
    """While the database is away (stopped, restarting), a 503 a client may retry: the pool reconnects by itself."""
    log.warning("database unreachable: %s", str(exc).splitlines()[0])
    return JSONResponse(
        {"detail": "the database is unreachable; try again shortly"},
        status_code=503,
        headers={"retry-after": str(DATABASE_RETRY_AFTER)},
    )


def _reap_once(timeout: float) -> None:
    # Sent before the commit: if the broker is down, the rollback leaves the job stale and the next pass
    # retries; a message that beats the commit still finds a claimable (stale) job.
    with session_scope() as session:
        for job_id in reap_stale_jobs(session, timeout, get_settings().tracked_timeout):
            log.warning("job %s lost its worker; requeued", job_id)
            queue.enqueue_job(job_id)
    with session_scope() as session:
        for resend in reap_stale_analyses(session, timeout, get_settings().max_attempts):
            log.warning("analysis %s lost its worker; sent again (chunk %s)", resend.analysis_id, resend.chunk)
            if resend.chunk is None:
                queue.enqueue_analysis(resend.analysis_id)
            else:
                queue.enqueue_grid_chunk(resend.analysis_id, resend.chunk)


async def _reaper_loop(timeout: float) -> None:
    """Reaps what lost its worker or tracker. After a database outage it first waits out the longest heartbeat
    timeout: heartbeats could not be written meanwhile, so their age is no sign of a lost worker."""
    tracked_timeout = get_settings().tracked_timeout
    back_since: float | None = -math.inf  # when the database was last seen coming back
    while True:
        try:
            if back_since is None:
                await run_in_threadpool(_database_answers)
                back_since = time.monotonic()
            if time.monotonic() - back_since >= max(timeout, tracked_timeout):
                await run_in_threadpool(_reap_once, timeout)
        except UNREACHABLE:
            back_since = None
        except Exception:
            log.exception("reaper pass failed")
        await asyncio.sleep(max(1.0, min(timeout, tracked_timeout) / 4))


def _database_answers() -> None:
    with session_scope() as session:
        session.execute(text("SELECT 1"))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_reaper_loop(get_settings().heartbeat_timeout))
    yield
    await stop_hub(app)
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec_schema.pop("$defs", {}))
        components["JobSpec"] = spec_schema
        for model in (*ANALYSIS_KINDS.values(), *dict.fromkeys(DOCUMENTS.values())):
            one = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(one.pop("$defs", {}))
            components[model.__name__] = one
        app.openapi_schema = schema
    return app.openapi_schema


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        responses=ERROR_RESPONSES,
        title="Dynascope",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    uploads = re.compile(rf"{API_PREFIX}/(datasets|runs/\d+/artifacts)")  # files, under the team's upload limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, exempt=uploads)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestTimer)
    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _database_away)
    for module in (
        health,
        account,
        tokens,
        teams,
        specs,
        datasets,
        jobs,
        runs,
        sweeps,
        metrics,
        results,
        figures,
        landscapes,
        reports,
        artifacts,
        analyses,
        events,
        exports,
        compare,
        table,
        operator,
    ):
        app.include_router(module.router, prefix=API_PREFIX)

    plotly_js = files("plotly") / "package_data" / "plotly.min.js"

    # Swagger UI (from its CDN, when the browser can reach it): the one page whose CSP allows that CDN and, by
    # its hash, the page's own start-up script. The page is the same for every request: made once.
    docs_body = bytes(get_swagger_ui_html(openapi_url=app.openapi_url or "", title="Dynascope API").body).decode()
    inline = re.findall(r"<script>(.*?)</script>", docs_body, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline)
    docs_csp = (
        f"default-src 'self'; script-src 'self' https://cdn.jsdelivr.net {hashes}; style-src 'self' 'unsafe-inline' "
        "https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'"
    )

    @app.get(f"{API_PREFIX}/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(docs_body, headers={"content-security-policy": docs_csp})

    # plotly.js bundles, cached for a day: a browser then also keeps the compiled code, which saves most of their
    # start-up. The full one comes with the Python package; the cartesian one (what a page needs until a 3-D
    # surface is asked for) lies in frontend/vendor.
    bundles = {"plotly.min.js": Path(str(plotly_js)), "plotly-cartesian.min.js": FRONTEND_DIR / "vendor" / "plotly-cartesian.min.js"}

    @app.get("/static/vendor/{name}", include_in_schema=False)
    def plotly_bundle(name: str) -> FileResponse:
        if name not in bundles:
            raise HTTPException(404, detail="not found")
        return FileResponse(bundles[name], media_type="text/javascript", headers={"cache-control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=FRONTEND_DIR), name="static")
    return app
