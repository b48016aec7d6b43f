from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from backend.api.deps import SessionDep
from backend.api.jobs import ChosenJobs
from backend.services import export

router = APIRouter(prefix="/export", tags=["export"])

Names = Annotated[
    str | None, Query(max_length=10_000, pattern=r"^[A-Za-z0-9_/.,\-]*$", description="comma-separated series names (default: all)")
]


@router.get(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {m: {} for m in export.MEDIA.values()}, "description": "the long table, streamed"}},
)
def export_series(
    session: SessionDep,
    query: ChosenJobs,
    format: Annotated[export.Format, Query(description="parquet (pyarrow) or csv")] = "parquet",
    names: Names = None,
    prefix: Annotated[
        str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_/.\-]*$", description="only series whose names start so")
    ] = None,
    fields: Annotated[
        str | None,
        Query(
            max_length=10_000,
            pattern=r"^[A-Za-z0-9_.,]*$",
            description="spec fields as columns (default: those that differ between the jobs)",
        ),
    ] = None,
) -> StreamingResponse:
    """The series of many jobs — by ids, by sweep (`sweep_id`), or by the job list's filters, in the caller's team —
    as one long table: job_id, job_name, a column per spec field, series, step, value. Streamed a record batch at a
    time; the headers give its rows and jobs. More than `max_export_jobs` jobs answer 413 naming the limit."""
    columns = [f for f in fields.split(",") if f] if fields is not None else None
    selection = export.select_jobs(session, query, columns, [n for n in names.split(",") if n] if names else None, prefix or None)
    headers = {
        "Content-Disposition": f'attachment; filename="dynascope-export.{format}"',
        "X-Dynascope-Rows": str(selection.rows(session)),
        "X-Dynascope-Jobs": str(len(selection.jobs)),
    }
    return StreamingResponse(export.stream(selection, format), media_type=export.MEDIA[format], headers=headers)
