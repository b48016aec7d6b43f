import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.models import Result
from backend.services import landscape_export
from backend.spec import GRID_RESULTS

router = APIRouter(prefix="/jobs", tags=["results"])


@router.get("/{job_id}/landscapes/{result_id}/export", response_class=Response)
def export_landscape(
    job_id: RowId,
    result_id: RowId,
    session: SessionDep,
    who: Viewer,
    format: Annotated[str, Query(pattern=r"^(json|csv|npz|vtk)$", description="json, csv, npz or vtk (ParaView)")] = "csv",
) -> Response:
    """A loss landscape result as a file: every array, and its settings (grid, directions' seed, sample)."""
    get_job_or_404(session, job_id, who.team_id)
    result = session.get(Result, result_id)
    if result is None or result.job_id != job_id or result.kind not in GRID_RESULTS:
        raise HTTPException(404, detail=f"job {job_id} has no landscape result {result_id}")
    data = result.data
    name = f"job{job_id}-landscape-step{result.step}-{result_id}.{format}"
    if format == "json":
        body: str | bytes = json.dumps(data)
    elif format == "csv":
        body = landscape_export.to_csv(data)
    elif format == "npz":
        body = landscape_export.to_npz(data)
    else:
        body = landscape_export.to_vtk(data, f"Dynascope job {job_id} loss landscape at step {result.step}")
    return Response(body, media_type=landscape_export.FORMATS[format], headers={"content-disposition": f'attachment; filename="{name}"'})
