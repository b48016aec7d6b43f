"""Guarded state changes, for jobs and analyses alike: a transition is a conditional UPDATE of the row from the
states allowed to reach the new one (and any other conditions, such as the attempt that owns it), so two
workers, a reaper and a cancel racing on the same row cannot both win."""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from backend.models import Job, JobStatus, utcnow
from backend.services import notices

Allowed = Mapping[JobStatus, frozenset[JobStatus]]


class TransitionError(RuntimeError):
    pass


def check(allowed: Allowed, old: JobStatus | str, new: JobStatus | str, what: str = "a job") -> None:
    if JobStatus(new) not in allowed[JobStatus(old)]:
        raise TransitionError(f"{what} cannot go from {old} to {new}")


def transition(
    session: Session,
    model: Any,
    row_id: int,
    allowed: Allowed,
    new: JobStatus,
    *conditions: Any,
    only_from: list[str] | None = None,
    **values: Any,
) -> bool:
    """Move the row to `new` if its current state allows it (and `conditions` hold); True if this call did."""
    sources = only_from if only_from is not None else [old.value for old, targets in allowed.items() if new in targets]
    for old in sources:
        check(allowed, old, new, model.__tablename__[:-1])
    values = {"status": new.value, **values}
    if new.terminal:
        values.setdefault("finished_at", utcnow())
    result = session.execute(update(model).where(model.id == row_id, model.status.in_(sources), *conditions).values(**values))
    if result.rowcount == 1:
        notices.changed(session, row_id if model is Job else session.get(model, row_id).job_id)
    return result.rowcount == 1
