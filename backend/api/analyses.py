from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Body, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import queue
from backend.api.auth import Member, Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404, send_or_undo
from backend.models import Analysis, Artifact, Job
from backend.schemas import AnalysisOut
from backend.services import analyses
from backend.spec import (
    ANALYSIS_KINDS,
    CheckpointAnalysis,
    InterpolationAnalysis,
    RepresentationsAnalysis,
    TrajectoryAnalysis,
    field_errors,
)

router = APIRouter(prefix="/jobs", tags=["analyses"])
_ANALYSIS = TypeAdapter(CheckpointAnalysis)


def _refuse(field: str, msg: str) -> NoReturn:
    raise RequestValidationError([{"loc": ["body", field], "msg": msg, "type": "no_checkpoint"}])


def _kept_steps(session: Session, job_id: int) -> list[int]:
    query = select(Artifact.step).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint").order_by(Artifact.step)
    return list(session.scalars(query))


def _validated(body: dict[str, Any]) -> Any:  # one of ANALYSIS_KINDS' models
    body = {"kind": "hessian", **body}
    try:
        return _ANALYSIS.validate_python(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in field_errors(exc, body)]) from None


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in (m.__name__ for m in ANALYSIS_KINDS.values())],
                }
            }
        },
    }
}


@router.post("/{job_id}/analyses", status_code=201, response_model=AnalysisOut, openapi_extra=_BODY)
def create_analysis(
    job_id: RowId,
    body: Annotated[dict[str, Any], Body()],
    session: SessionDep,
    who: Member,
) -> AnalysisOut:
    """Analyze checkpoints the job kept: `hessian` or `landscape` around one (the latest by default),
    `trajectory` over all of them up to one, `interpolation` between two (or to another job's latest),
    `representations`: the CKA of every layer of one with every layer of another (this job's, or another job's
    latest). Results land under `{kind}_analysis`."""
    get_job_or_404(session, job_id, who.team_id)
    request = _validated(body)
    steps = _kept_steps(session, job_id)
    if not steps:
        _refuse("step", f"job {job_id} has kept no checkpoint yet")
    default = steps[0] if isinstance(request, InterpolationAnalysis) and request.to_job is None else steps[-1]
    step = default if request.step is None else request.step
    if step not in steps:
        _refuse("step", f"job {job_id} has no checkpoint at step {step}; it has {steps}")
    params = request.model_dump(mode="json") | {"step": step}
    if isinstance(request, TrajectoryAnalysis) and len([s for s in steps if s <= step]) < 3:
        kept = len([s for s in steps if s <= step])
        _refuse(
            "step",
            f"a trajectory needs at least 3 kept checkpoints up to step {step}; job {job_id} has {kept} (lower train.checkpoint_every)",
        )
    if isinstance(request, InterpolationAnalysis | RepresentationsAnalysis):
        if request.to_job is not None:
            other = session.get(Job, request.to_job)
            if other is None or other.team_id != who.team_id:
                _refuse("to_job", f"no job {request.to_job}")
            if not _kept_steps(session, request.to_job):
                _refuse("to_job", f"job {request.to_job} has kept no checkpoint yet")
        else:
            fallback = steps[-1] if isinstance(request, InterpolationAnalysis) else steps[0]
            to_step = fallback if request.to_step is None else request.to_step
            if to_step not in steps:
                _refuse("to_step", f"job {job_id} has no checkpoint at step {to_step}; it has {steps}")
            if to_step == step and isinstance(request, InterpolationAnalysis):
                _refuse("to_step", f"both ends are the checkpoint at step {step}: choose another step or to_job")
            params["to_step"] = to_step
    analysis = Analysis(job_id=job_id, kind=request.kind, step=step, params=params)
    session.add(analysis)
    session.commit()
    send_or_undo(session, lambda: queue.enqueue_analysis(analysis.id), undo=analysis)
    return AnalysisOut.model_validate(analysis)


@router.get("/{job_id}/analyses", response_model=list[AnalysisOut])
def list_analyses(job_id: RowId, session: SessionDep, who: Viewer) -> list[AnalysisOut]:
    get_job_or_404(session, job_id, who.team_id)
    rows = session.scalars(select(Analysis).where(Analysis.job_id == job_id).order_by(Analysis.id))
    return [AnalysisOut.model_validate(a) for a in rows]


@router.post("/{job_id}/analyses/{analysis_id}/cancel", response_model=AnalysisOut)
def cancel_analysis(job_id: RowId, analysis_id: RowId, session: SessionDep, who: Member) -> AnalysisOut:
    """A queued analysis is cancelled at once; a running one stops within a heartbeat, keeping its partial result."""
    get_job_or_404(session, job_id, who.team_id)
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.job_id != job_id:
        raise HTTPException(404, detail=f"job {job_id} has no analysis {analysis_id}")
    analyses.cancel(session, analysis)
    session.commit()
    session.refresh(analysis)
    return AnalysisOut.model_validate(analysis)
