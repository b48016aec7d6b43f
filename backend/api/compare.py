from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func, select

from backend.api.deps import SessionDep, SettingsDep
from backend.api.jobs import JobFilterDep
from backend.models import Job
from backend.services.groups import Groups, group_runs
from backend.services.jobs import filtered

router = APIRouter(prefix="/compare", tags=["compare"])


@router.get("/groups", response_model=Groups)
def get_groups(
    session: SessionDep,
    settings: SettingsDep,
    filters: JobFilterDep,
    series: Annotated[str, Query(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199}$", description="the series aggregated")],
    ids: Annotated[
        str | None, Query(max_length=20_000, pattern=r"^([0-9]{1,10}(,[0-9]{1,10})*)?$", description="comma-separated job ids")
    ] = None,
    by: Annotated[
        str,
        Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,]*$", description="comma-separated spec fields the groups share (empty: one group)"),
    ] = "",
    max_points: Annotated[
        int, Query(ge=10, le=100_000, description="steps per group at most (evenly spaced steps of the aggregate)")
    ] = 2000,
) -> Groups:
    """The chosen runs (by ids, by sweep — `sweep_id` — or by the job list's filters, in the caller's team) grouped
    by spec fields, and per group one series aggregated on the union of its runs' steps from the full-resolution
    points: mean, sample standard deviation, standard error, min, max and the count of runs at each step; NaN and
    ±Inf points are left out and counted. More than `max_export_jobs` runs answer 413 naming the limit."""
    query = filtered(filters)
    if ids:
        query = query.where(Job.id.in_([int(i) for i in ids.split(",")]))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count > settings.max_export_jobs:
        raise HTTPException(413, detail=f"{count} runs chosen; at most {settings.max_export_jobs} are grouped at once (max_export_jobs)")
    jobs = list(session.scalars(query.order_by(Job.id)))
    return group_runs(session, jobs, [f for f in by.split(",") if f], series, max_points)
