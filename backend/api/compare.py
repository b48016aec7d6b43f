from typing import Annotated


from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from backend.api.deps import SessionDep, SettingsDep
from backend.api.jobs import JobFilterDep
from backend.api.reports import plotly_js
from backend.models import Job, Sweep
from backend.services import sweep_report as sweep_report_service
from backend.figures.base import Figure
from backend.figures.sweep import Band, band_figure
from backend.services.groups import Groups, group_runs
from backend.services.jobs import filtered

router = APIRouter(prefix="/compare", tags=["compare"])


class GroupsOut(Groups):
    figure: Figure = Figure(id="compare-plot")
    thresholds: Groups | None = None


@router.get("/groups", response_model=GroupsOut)
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
    band: Annotated[Band, Query(description="the figure's band: ± σ, ± standard error, or min–max")] = "std",
    logy: bool = False,
) -> GroupsOut:
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
    fields = [f for f in by.split(",") if f]
    groups = group_runs(session, jobs, fields, series, max_points)
    thresholds = group_runs(session, jobs, fields, "hessian/threshold", max_points) if series == "hessian/sharpness" else None
    return GroupsOut(**groups.model_dump(), figure=band_figure(groups, band, logy, thresholds), thresholds=thresholds)


@router.get("/report.html", response_class=HTMLResponse)
def sweep_report(
    session: SessionDep,
    settings: SettingsDep,
    filters: JobFilterDep,
    ids: Annotated[
        str | None, Query(max_length=20_000, pattern=r"^([0-9]{1,10}(,[0-9]{1,10})*)?$", description="comma-separated job ids")
    ] = None,
    by: Annotated[
        str | None, Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,]*$", description="the groups' fields (default: a sweep's, seeds aside)")
    ] = None,
    band: Annotated[Band, Query()] = "std",
) -> HTMLResponse:
    """A sweep (`sweep_id`) or a selection of runs as one self-contained HTML file: grouped charts with bands, the
    runs table, the phase diagram, the learning-rate sensitivity and the specs; plotly.js inside (opens offline)."""
    query = filtered(filters)
    if ids:
        query = query.where(Job.id.in_([int(i) for i in ids.split(",")]))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count > settings.max_export_jobs:
        raise HTTPException(413, detail=f"{count} runs chosen; at most {settings.max_export_jobs} go in one report (max_export_jobs)")
    sweep = session.get(Sweep, filters.sweep_id) if filters.sweep_id is not None else None
    sweep = sweep if sweep is not None and sweep.team_id == filters.team_id else None
    fields = [f for f in by.split(",") if f] if by is not None else None
    body = sweep_report_service.render(session, sweep, query, fields, band, plotly_js())
    name = f"sweep{sweep.id}" if sweep is not None else "runs"
    return HTMLResponse(body, headers={"content-disposition": f'attachment; filename="dynascope-{name}-report.html"'})
