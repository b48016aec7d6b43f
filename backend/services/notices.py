"""Job change notices: whoever writes a job's points, results or state (a worker's recorder, the API for a tracked
run or a transition) publishes the job's id on the broker's Redis, and the API's event streams wake on it instead
of polling. Best effort: a notice that cannot be sent only delays a stream until its next fallback read."""

import logging
from functools import cache
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.models import Job

log = logging.getLogger(__name__)
CHANNEL = "dynascope:job-changed"
PENDING = "dynascope_jobs_changed"


def client() -> redis.Redis | None:
    """This process's client of the broker's Redis (short timeouts: what it sends is best effort); None without one."""
    url = get_settings().broker_redis_url
    return None if url is None else _client(url)


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def publish(job_id: int) -> None:
    if (broker := client()) is None:
        return
    try:
        broker.publish(CHANNEL, str(job_id))
    except redis.RedisError as exc:
        log.debug("notice of job %s not sent: %s", job_id, exc)


def changed(session: Session, job_id: int) -> None:
    """Mark a job as changed by this session (a statement the ORM does not see: an UPDATE, a bulk INSERT); its
    notice goes out when the session commits."""
    session.info.setdefault(PENDING, set()).add(job_id)


@event.listens_for(Session, "after_flush")
def _rows_flushed(session: Session, _: Any) -> None:
    """Jobs whose own row, or a row of theirs (result, analysis, artifact), the ORM wrote."""
    for row in (*session.new, *session.dirty, *session.deleted):
        job_id = row.id if isinstance(row, Job) else getattr(row, "job_id", None)
        if isinstance(job_id, int):
            changed(session, job_id)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    for job_id in sorted(session.info.pop(PENDING, ())):
        publish(job_id)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(PENDING, None)
