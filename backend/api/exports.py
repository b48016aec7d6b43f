from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from backend.api.deps import SessionDep, SettingsDep
from backend.api.jobs import JobFilterDep
from backend.models import Job
from backend.services import export
from backend.services.jobs import filtered

router = APIRouter(prefix="/export", tags=["export"])

Names = Annotated[
    str | None, Query(max_length=10_000, pattern=r"^[A-Za-z0-9_/.,\-]*$", description="comma-separated series names (default: all)")
]


def _ids(text: str | None) -> list[int] | None:
    return [int(i) for i in text.split(",") if i] if text else None


@router.get(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {m: {} for m in export.MEDIA.values()}, "description": "the long table, streamed"}},
)
def export_series(
    session: SessionDep,
    settings: SettingsDep,
    filters: JobFilterDep,
    format: Annotated[export.Format, Query(description="parquet (pyarrow) or csv")] = "parquet",
    ids: Annotated[
        str | None,
        Query(
            max_length=20_000, pattern=r"^([0-9]{1,10}(,[0-9]{1,10})*)?$", description="comma-separated job ids (with the filters: both)"
        ),
    ] = None,
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
    query = filtered(filters)
    if (chosen := _ids(ids)) is not None:
        query = query.where(Job.id.in_(chosen))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count > settings.max_export_jobs:
        raise HTTPException(
            413,
            detail=f"the export selects {count} jobs; at most {settings.max_export_jobs} go in one (max_export_jobs): choose fewer by ids, sweep or filters",
        )
    columns = [f for f in fields.split(",") if f] if fields is not None else None
    selection = export.select_jobs(session, query, columns, [n for n in names.split(",") if n] if names else None, prefix or None)
    headers = {
        "Content-Disposition": f'attachment; filename="dynascope-export.{format}"',
        "X-Dynascope-Rows": str(selection.rows(session)),
        "X-Dynascope-Jobs": str(len(selection.jobs)),
    }
    return StreamingResponse(export.stream(selection, format), media_type=export.MEDIA[format], headers=headers)
