"""Riding out a database outage: how long it has lasted, when to try again (exponential backoff), and when to give
up, past the operator's limit (DYNASCOPE_DATABASE_OUTAGE_SECONDS)."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from celery import Task

from backend.db import UNREACHABLE

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY, MAX_DELAY = 0.25, 4.0
REQUEUE_SECONDS = 5.0


class DatabaseUnreachable(RuntimeError):
    """The database stayed away past the limit: the job ends with this as its reason."""


class Outage:
    def __init__(self, limit: float, what: str) -> None:
        self.limit, self.what = limit, what
        self.since: float | None = None
        self.tries = 0
        self.next_try = 0.0
        self.unreported = 0.0
        self.gave_up = False

    def failed(self, exc: Exception) -> None:
        """A write failed for want of the database: schedule the next try, or give up past the limit."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("%s: the database is unreachable; waiting for it (at most %g s)", self.what, self.limit)
        self.tries += 1
        if now - self.since > self.limit:
            self.gave_up = True
            cause = str(exc.orig if hasattr(exc, "orig") else exc).strip().splitlines()[0]
            raise DatabaseUnreachable(
                f"the database was unreachable for {now - self.since:.0f} s, past DYNASCOPE_DATABASE_OUTAGE_SECONDS={self.limit:g} "
                f"({cause})"
            ) from exc
        # The last try falls at the limit, not a backoff past it.
        self.next_try = min(now + min(MAX_DELAY, FIRST_DELAY * 2 ** (self.tries - 1)), self.since + self.limit)

    def due(self) -> bool:
        return time.monotonic() >= self.next_try

    def back(self) -> None:
        """A write got through: an outage in progress is over, and its length waits to be reported."""
        if self.since is None:
            return
        seconds = time.monotonic() - self.since
        self.unreported += seconds
        self.since, self.tries, self.next_try = None, 0, 0.0
        log.warning("%s: the database is back after %.1f s", self.what, seconds)

    def report(self) -> float | None:
        """The seconds of outage since the last report (None: none)."""
        seconds, self.unreported = self.unreported, 0.0
        return seconds or None

    def persist(self, write: Callable[[], T]) -> T:
        """`write()` until it gets through, waiting out an outage with backoff."""
        while True:
            try:
                result = write()
            except UNREACHABLE as exc:
                self.failed(exc)
                time.sleep(max(0.0, self.next_try - time.monotonic()))
                continue
            self.back()
            return result


def or_requeue(task: Task, body: Callable[[], T]) -> T:
    """A task's body; if the database cannot be reached to start it, its message goes back to the queue (tried
    again after REQUEUE_SECONDS, for as long as it takes) instead of being dropped."""
    try:
        return body()
    except UNREACHABLE as exc:
        log.warning("%s: the database is unreachable (%s); queued again", task.request.id, str(exc).splitlines()[0])
        raise task.retry(countdown=REQUEUE_SECONDS, max_retries=None) from None
