from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.models import Result
from backend.schemas import ResultOut

router = APIRouter(prefix="/jobs", tags=["results"])


@router.get("/{job_id}/results/{kind}", response_model=list[ResultOut])
def get_results(
    job_id: RowId,
    kind: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,49}$")],
    session: SessionDep,
    who: Viewer,
    last: Annotated[int | None, Query(ge=1, le=10_000, description="only the last N, still in step order")] = None,
) -> list[ResultOut]:
    """Every result of one kind (`summary`, `hessian`, …) in step order."""
    get_job_or_404(session, job_id, who.team_id)
    query = select(Result).where(Result.job_id == job_id, Result.kind == kind)
    if last is not None:
        rows = list(session.scalars(query.order_by(Result.step.desc(), Result.id.desc()).limit(last)))[::-1]
    else:
        rows = list(session.scalars(query.order_by(Result.step, Result.id)))
    return [ResultOut.model_validate(r) for r in rows]
