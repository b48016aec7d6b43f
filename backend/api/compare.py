from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from backend.api.deps import SessionDep
from backend.api.jobs import ChosenJobs, JobFilterDep
from backend.api.reports import plotly_js
from backend.figures.base import Figure
from backend.figures.sweep import Band, band_figure
from backend.models import Job, Sweep
from backend.services import sweep_report
from backend.services.groups import Groups, group_runs

router = APIRouter(prefix="/compare", tags=["compare"])

Fields = Annotated[str, Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,]*$", description="comma-separated spec fields the groups share")]


class GroupsOut(Groups):
    figure: Figure = Figure(id="compare-plot")
    thresholds: Groups | None = None


@router.get("/groups", response_model=GroupsOut)
def get_groups(
    session: SessionDep,
    query: ChosenJobs,
    series: Annotated[str, Query(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199}$", description="the series aggregated")],
    by: Fields = "",
    max_points: Annotated[
        int, Query(ge=10, le=100_000, description="steps per group at most (evenly spaced steps of the aggregate)")
    ] = 2000,
    band: Annotated[Band, Query(description="the figure's band: ± σ, ± standard error, or min–max")] = "std",
    logy: bool = False,
) -> GroupsOut:
    """The chosen runs (by ids, by sweep — `sweep_id` — or by the job list's filters, in the caller's team) grouped
    by spec fields (none: one group), and per group one series aggregated on the union of its runs' steps from the
    full-resolution points: mean, sample standard deviation, standard error, min, max and the count of runs at each
    step; NaN and ±Inf points are left out and counted. With the figure Compare draws (the sharpness: with each
    group's threshold). More than `max_export_jobs` runs answer 413 naming the limit."""
    jobs = list(session.scalars(query.order_by(Job.id)))
    fields = [f for f in by.split(",") if f]
    groups = group_runs(session, jobs, fields, series, max_points)
    thresholds = group_runs(session, jobs, fields, "hessian/threshold", max_points) if series == "hessian/sharpness" else None
    return GroupsOut(**groups.model_dump(), figure=band_figure(groups, band, logy, thresholds), thresholds=thresholds)


@router.get("/report.html", response_class=HTMLResponse)
def get_sweep_report(
    session: SessionDep,
    query: ChosenJobs,
    filters: JobFilterDep,
    by: Annotated[
        str | None, Query(max_length=2000, pattern=r"^[A-Za-z0-9_.,]*$", description="the groups' fields (default: a sweep's, seeds aside)")
    ] = None,
    band: Annotated[Band, Query()] = "std",
) -> HTMLResponse:
    """A sweep (`sweep_id`) or a selection of runs as one self-contained HTML file: grouped charts with bands, the
    runs table, the phase diagram, the learning-rate sensitivity and the specs; plotly.js inside (opens offline)."""
    sweep = session.get(Sweep, filters.sweep_id) if filters.sweep_id is not None else None
    sweep = sweep if sweep is not None and sweep.team_id == filters.team_id else None
    fields = [f for f in by.split(",") if f] if by is not None else None
    body = sweep_report.render(session, sweep, query, fields, band, plotly_js())
    name = f"sweep{sweep.id}" if sweep is not None else "runs"
    return HTMLResponse(body, headers={"content-disposition": f'attachment; filename="dynascope-{name}-report.html"'})
