from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.schemas import MetricsOut, SeriesOut
from backend.services.downsample import downsample_minmax, json_safe
from backend.services.series import read_series, series_names

router = APIRouter(prefix="/jobs", tags=["metrics"])


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def get_metrics(
    job_id: RowId,
    session: SessionDep,
    who: Viewer,
    names: Annotated[str | None, Query(max_length=2000, description="comma-separated series; all when absent")] = None,
    prefix: Annotated[str | None, Query(max_length=200, description="only the series whose names start so")] = None,
    missing_ok: Annotated[bool, Query(description="names the job has not (yet) recorded are left out, not a 404")] = False,
    max_points: Annotated[int, Query(ge=2, le=100_000, description="per series; min/max buckets keep spikes")] = 1000,
) -> MetricsOut:
    get_job_or_404(session, job_id, who.team_id)
    available = series_names(session, job_id)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else available
    if prefix is not None:
        wanted = [n for n in wanted if n.startswith(prefix)]
    unknown = sorted(set(wanted) - set(available))
    if unknown and names and not missing_ok:
        raise HTTPException(404, detail=f"no series {', '.join(unknown)} in job {job_id}; it has {', '.join(available)}")
    series = []
    for name, (steps, values) in read_series(session, job_id, [n for n in wanted if n in available]).items():
        ds_steps, ds_values = downsample_minmax(steps, values, max_points)
        series.append(SeriesOut(name=name, steps=ds_steps.tolist(), values=json_safe(ds_values), total_points=len(steps)))
    return MetricsOut(job_id=job_id, max_points=max_points, series=series)
