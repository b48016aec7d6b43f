from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.models import Result
from backend.schemas import ResultOut
from backend.spec import ANALYSIS_KINDS, GRID_RESULTS
from dynascope.results import RESULTS, Document, LandscapeResult

router = APIRouter(prefix="/jobs", tags=["results"])
DOCUMENTS: dict[str, type[Document]] = RESULTS | {
    f"{kind}_analysis": LandscapeResult if f"{kind}_analysis" in GRID_RESULTS else RESULTS[kind] for kind in ANALYSIS_KINDS
}
"""Each kind of result and the schema of its `data` (components of the OpenAPI document)."""
_KINDS = ", ".join(f"`{kind}`: {document.__name__}" for kind, document in DOCUMENTS.items())


@router.get(
    "/{job_id}/results/{kind}",
    response_model=list[ResultOut],
    description=f"Every result of one kind in step order. Kinds and the schema of their `data`: {_KINDS}.",
)
def get_results(
    job_id: RowId,
    kind: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,49}$")],
    session: SessionDep,
    who: Viewer,
    last: Annotated[int | None, Query(ge=1, le=10_000, description="only the last N, still in step order")] = None,
) -> list[ResultOut]:
    get_job_or_404(session, job_id, who.team_id)
    query = select(Result).where(Result.job_id == job_id, Result.kind == kind)
    if last is not None:
        rows = list(session.scalars(query.order_by(Result.step.desc(), Result.id.desc()).limit(last)))[::-1]
    else:
        rows = list(session.scalars(query.order_by(Result.step, Result.id)))
    return [ResultOut.model_validate(r) for r in rows]
