"""Liveness of checkpoint analyses: beats, claims of grid chunks, and what to send again when a worker is lost.

An analysis computed in one task beats on its row; a split grid's chunk task holds a claim (a `grid_claim`
result) that it beats while it computes. The reaper sends again an analysis whose worker went silent, or just
the chunks whose claims went silent: a lost worker costs only what it held.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from backend.models import Analysis, JobStatus, Result, utcnow

PLAN, CHUNK, CLAIM = "grid_plan", "grid_chunk", "grid_claim"  # result kinds that hold a split grid


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
            if analysis.attempts > max_attempts:
                _fail(analysis, max_attempts)
                continue
            for claim in lost:
                session.delete(claim)
                resend.append(Resend(analysis.id, claim.data["index"]))
        elif analysis.heartbeat_at is None or analysis.heartbeat_at < cutoff:
            still_stale = or_(Analysis.heartbeat_at < cutoff, Analysis.heartbeat_at.is_(None))
            if analysis.attempts >= max_attempts:
                _fail(analysis, max_attempts)
            elif session.execute(
                update(Analysis)
                .where(Analysis.id == analysis.id, Analysis.status == JobStatus.running.value, still_stale)
                .values(status=JobStatus.queued.value, stage="requeued: worker lost")
            ).rowcount:
                resend.append(Resend(analysis.id))
    return resend


def _fail(analysis: Analysis, cap: int) -> None:
    analysis.status, analysis.stage, analysis.finished_at = JobStatus.failed.value, "failed", utcnow()
    analysis.error = f"worker lost {analysis.attempts} times (attempt cap {cap})"


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
            analysis.status, analysis.stage = JobStatus.queued.value, "requeued after restart"
            resend.append(Resend(analysis.id))
    return resend
