from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.services import report

router = APIRouter(prefix="/jobs", tags=["results"])


@lru_cache
def plotly_js() -> str:
    return (files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


@router.get("/{job_id}/report.html", response_class=HTMLResponse)
def job_report(job_id: RowId, session: SessionDep, who: Viewer) -> HTMLResponse:
    """One self-contained HTML file: the job's facts, spec and every chart, plotly.js inside (opens offline)."""
    job = get_job_or_404(session, job_id, who.team_id)
    body = report.render(session, job, plotly_js())
    return HTMLResponse(body, headers={"content-disposition": f'attachment; filename="dynascope-job{job_id}-report.html"'})
