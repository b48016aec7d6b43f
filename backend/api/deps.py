"""Typed dependencies the routers share."""

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.db import get_sessionmaker
from backend.models import Job
from backend.services.artifacts import ArtifactStore, get_store


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


log = logging.getLogger(__name__)
MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="a row id")]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _store(settings: SettingsDep) -> ArtifactStore:
    return get_store(settings)


StoreDep = Annotated[ArtifactStore, Depends(_store)]


def send_or_undo(session: Session, send: Callable[[], object], undo: object) -> None:
    """Send to the queue what was just committed; if the broker is down, delete `undo` (the job, its sweep or
    the analysis) and answer 503. A message already sent then finds no row and is skipped."""
    try:
        send()
    except Exception as exc:
        log.exception("could not queue %r", undo)
        session.rollback()
        session.delete(undo)
        session.commit()
        raise HTTPException(503, detail=f"the job queue is unreachable: {exc}") from None
    session.commit()


def get_job_or_404(session: Session, job_id: int, team_id: int | None) -> Job:
    """The job if it is the team's; another team's job answers exactly as a missing one (no existence leak)."""
    job = session.get(Job, job_id)
    if job is None or job.team_id != team_id:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return job


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (not after it has all arrived)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"upload over the team's limit of {limit} bytes per file")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise HTTPException(413, detail=f"upload over the team's limit of {limit} bytes per file")
        chunks.append(chunk)
    return b"".join(chunks)


# A raw body in the published schema (uploads, artifacts).
OCTET_STREAM_BODY = {
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}
