from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from backend import queue
from backend.api.deps import SessionDep, get_job_or_404, send_or_undo
from backend.models import Analysis, Artifact
from backend.schemas import AnalysisOut
from backend.spec import CheckpointAnalysis, HessianAnalysis, LandscapeAnalysis, field_errors

router = APIRouter(prefix="/jobs", tags=["analyses"])
_ANALYSIS = TypeAdapter(CheckpointAnalysis)


def _validated(body: dict[str, Any]) -> HessianAnalysis | LandscapeAnalysis:
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
                    "oneOf": [{"$ref": "#/components/schemas/HessianAnalysis"}, {"$ref": "#/components/schemas/LandscapeAnalysis"}],
                }
            }
        },
    }
}


@router.post("/{job_id}/analyses", status_code=201, response_model=AnalysisOut, openapi_extra=_BODY)
def create_analysis(
    job_id: int,
    body: Annotated[dict[str, Any], Body()],
    session: SessionDep,
) -> AnalysisOut:
    """Analyze a checkpoint the job kept (the latest by default): `kind: hessian` (HessianAnalysis) or
    `kind: landscape` (LandscapeAnalysis); results land under `{kind}_analysis`."""
    get_job_or_404(session, job_id)
    request = _validated(body)
    steps = list(
        session.scalars(
            select(Artifact.step).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint").order_by(Artifact.step)
        )
    )
    if not steps:
        raise RequestValidationError([{"loc": ["body", "step"], "msg": f"job {job_id} has kept no checkpoint yet", "type": "no_checkpoint"}])
    step = steps[-1] if request.step is None else request.step
    if step not in steps:
        msg = f"job {job_id} has no checkpoint at step {step}; it has {steps}"
        raise RequestValidationError([{"loc": ["body", "step"], "msg": msg, "type": "no_checkpoint"}])
    analysis = Analysis(job_id=job_id, kind=request.kind, step=step, params=request.model_dump(mode="json"))
    session.add(analysis)
    session.commit()
    send_or_undo(session, lambda: queue.enqueue_analysis(analysis.id), undo=analysis)
    return AnalysisOut.model_validate(analysis)


@router.get("/{job_id}/analyses", response_model=list[AnalysisOut])
def list_analyses(job_id: int, session: SessionDep) -> list[AnalysisOut]:
    get_job_or_404(session, job_id)
    rows = session.scalars(select(Analysis).where(Analysis.job_id == job_id).order_by(Analysis.id))
    return [AnalysisOut.model_validate(a) for a in rows]
