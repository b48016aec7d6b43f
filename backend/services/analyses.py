"""Lifecycle and liveness of checkpoint analyses: the only place that moves an analysis between states
(guarded, see lifecycle.py), beats, claims of grid chunks, and what to send again when a worker is lost.

A worker's writes to a running analysis hold only while the attempt that claimed it still owns it (`ours`), so
a late write from a lost worker cannot overwrite a requeued analysis. An analysis computed in one task beats on
its row; a split grid's chunk task holds a claim (a `grid_claim` result) that it beats while it computes. The
reaper sends again an analysis whose worker went silent, or just the chunks whose claims went silent: a lost
worker costs only what it held.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from backend.models import Analysis, JobStatus, Result, utcnow
from backend.services import lifecycle, notices

PLAN, CHUNK, CLAIM = "grid_plan", "grid_chunk", "grid_claim"  # result kinds that hold a split grid
S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.running, S.cancelled, S.failed}),
    # running → queued is the reaper handing a lost worker's analysis to another worker.
    S.running: frozenset({S.queued, S.succeeded, S.failed, S.cancelled}),
    **{s: frozenset() for s in S if s.terminal},
}


def transition(session: Session, analysis_id: int, new: JobStatus, *conditions: Any, **values: Any) -> bool:
    """Move an analysis to `new` if its current state allows it (and `conditions` hold); True if this call did."""
    return lifecycle.transition(session, Analysis, analysis_id, ALLOWED, new, *conditions, **values)


def ours(attempt: int) -> Any:
    """The condition of a worker's write: the attempt that claimed the analysis still owns it."""
    return Analysis.attempts == attempt


def claim(session: Session, analysis_id: int) -> int | None:
    """queued → running for this worker, unless it was cancelled meanwhile; the attempt it owns, or None."""
    claimed = transition(
        session,
        analysis_id,
        S.running,
        Analysis.cancel_requested.is_(False),
        only_from=[S.queued.value],
        stage="loading the checkpoint",
        attempts=Analysis.attempts + 1,
        heartbeat_at=utcnow(),
    )
    return session.get(Analysis, analysis_id).attempts if claimed else None


def set_stage(session: Session, analysis_id: int, attempt: int | None, stage: str) -> None:
    """The stage text of a running analysis (`attempt` None: a chunk task's, which any attempt may write)."""
    mine = [ours(attempt)] if attempt is not None else []
    session.execute(update(Analysis).where(Analysis.id == analysis_id, Analysis.status == S.running.value, *mine).values(stage=stage[:200]))
    if (analysis := session.get(Analysis, analysis_id)) is not None:
        notices.changed(session, analysis.job_id)


def cancel(session: Session, analysis: Analysis) -> None:
    """A queued analysis is cancelled at once; a running one is asked to stop (its worker sees it at a beat)."""
    if transition(session, analysis.id, S.cancelled, only_from=[S.queued.value], stage="cancelled"):
        return
    session.execute(
        update(Analysis)
        .where(Analysis.id == analysis.id, Analysis.status == S.running.value)
        .values(cancel_requested=True, stage="cancelling")
    )


@dataclass
class Resend:
    analysis_id: int
    chunk: int | None = None  # None: the whole analysis


def rows(session: Session, analysis: Analysis, kind: str) -> list[Result]:
    query = select(Result).where(Result.job_id == analysis.job_id, Result.kind == kind, Result.step == analysis.step)
    return [r for r in session.scalars(query) if r.data.get("analysis_id") == analysis.id]


def claim_chunk(session: Session, analysis: Analysis, index: int) -> None:
    for row in rows(session, analysis, CLAIM):
        if row.data["index"] == index:
            session.delete(row)
    session.add(Result(job_id=analysis.job_id, kind=CLAIM, step=analysis.step, data=_claim(analysis.id, index)))


def beat(session: Session, analysis_id: int, chunk: int | None) -> bool:
    """Record that the worker is alive; whether it should stop (cancelled, or no longer running)."""
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.status != JobStatus.running.value or analysis.cancel_requested:
        return True
    if chunk is None:
        analysis.heartbeat_at = utcnow()
    else:
        for row in rows(session, analysis, CLAIM):
            if row.data["index"] == chunk:
                row.data = _claim(analysis_id, chunk)
    return False


def _claim(analysis_id: int, index: int) -> dict[str, Any]:
    return {"analysis_id": analysis_id, "index": index, "beat": utcnow().isoformat()}


def reap_stale_analyses(session: Session, timeout: float, max_attempts: int) -> list[Resend]:
    """Running analyses (or claimed chunks) whose worker stopped beating: what to send again, after the caller
    commits. Past the attempt cap the analysis fails instead."""
    cutoff = utcnow() - timedelta(seconds=timeout)
    resend: list[Resend] = []
    for analysis in session.scalars(select(Analysis).where(Analysis.status == JobStatus.running.value)).all():
        if rows(session, analysis, PLAN):
            lost = [c for c in rows(session, analysis, CLAIM) if datetime.fromisoformat(c.data["beat"]) < cutoff]
            if not lost:
                continue
            analysis.attempts += 1
            session.flush()
            if analysis.attempts > max_attempts:
                _fail(session, analysis, max_attempts)
                continue
            for claim in lost:
                session.delete(claim)
                resend.append(Resend(analysis.id, claim.data["index"]))
        elif analysis.heartbeat_at is None or analysis.heartbeat_at < cutoff:
            still_stale = or_(Analysis.heartbeat_at < cutoff, Analysis.heartbeat_at.is_(None))
            if analysis.attempts >= max_attempts:
                _fail(session, analysis, max_attempts)
            elif transition(
                session,
                analysis.id,
                S.queued,
                still_stale,
                ours(analysis.attempts),
                only_from=[S.running.value],
                stage="requeued: worker lost",
            ):
                resend.append(Resend(analysis.id))
    return resend


def _fail(session: Session, analysis: Analysis, cap: int) -> None:
    error = f"worker lost {analysis.attempts} times (attempt cap {cap})"
    transition(session, analysis.id, S.failed, ours(analysis.attempts), only_from=[S.running.value], stage="failed", error=error)


def recover_after_restart(session: Session) -> list[Resend]:
    """Embedded mode only (its one worker and queue are gone): every unfinished analysis is sent again — a
    split one as its missing chunks (their stale claims dropped), any other one whole."""
    resend: list[Resend] = []
    pending = (JobStatus.queued.value, JobStatus.running.value)
    for analysis in session.scalars(select(Analysis).where(Analysis.status.in_(pending))).all():
        plan = rows(session, analysis, PLAN)
        if plan and analysis.status == JobStatus.running.value:
            for claim in rows(session, analysis, CLAIM):
                session.delete(claim)
            done = {c.data["index"] for c in rows(session, analysis, CHUNK)}
            resend += [Resend(analysis.id, k) for k in range(plan[0].data["chunks"]) if k not in done]
        else:
            if analysis.status == S.running.value:
                transition(session, analysis.id, S.queued, only_from=[S.running.value])
            analysis.stage = "requeued after restart"
            resend.append(Resend(analysis.id))
    return resend
