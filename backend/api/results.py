from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from backend.api.deps import SessionDep, get_job_or_404
from backend.models import Result
from backend.schemas import ResultOut

router = APIRouter(prefix="/jobs", tags=["results"])


@router.get("/{job_id}/results/{kind}", response_model=list[ResultOut])
def get_results(
    job_id: int, kind: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,49}$")], session: SessionDep
) -> list[ResultOut]:
    """Every result of one kind (e.g. `summary`) in step order."""
    get_job_or_404(session, job_id)
    rows = session.scalars(select(Result).where(Result.job_id == job_id, Result.kind == kind).order_by(Result.step))
    return [ResultOut.model_validate(r) for r in rows]
