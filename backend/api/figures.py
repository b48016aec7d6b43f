"""A job's views as figures ready to draw (backend/figures: one description per figure, which the HTML report
embeds too)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, get_job_or_404
from backend.figures import FIGURES, View, result_kinds, views_of
from backend.figures.base import Options
from backend.services.job_source import JobSource

router = APIRouter(prefix="/jobs", tags=["figures"])
ViewName = Literal[tuple(FIGURES)]  # type: ignore[valid-type]


class ViewInfo(BaseModel):
    name: ViewName  # type: ignore[valid-type]
    title: str
    kinds: list[str] = Field(description="the result kinds it draws: its figures change when one of these arrives")


@router.get("/{job_id}/figures", response_model=list[ViewInfo])
def list_views(job_id: RowId, session: SessionDep, who: Viewer) -> list[ViewInfo]:
    """The views this job shows: training, and each view of a probe in its spec or of an analysis it has."""
    source = JobSource(session, get_job_or_404(session, job_id, who.team_id))
    return [ViewInfo(name=name, title=FIGURES[name].TITLE, kinds=result_kinds(name)) for name in views_of(source, source.kinds())]


@router.get("/{job_id}/figures/{view}", response_model=View)
def view_figures(job_id: RowId, view: ViewName, session: SessionDep, who: Viewer, options: Annotated[Options, Depends()]) -> View:  # type: ignore[valid-type]
    """One view's figures (Plotly traces and layout; `meta` holds facts about each, a trace's `meta.series` the
    series it draws), its notes and, where it draws one of several results, the choices."""
    source = JobSource(session, get_job_or_404(session, job_id, who.team_id))
    return FIGURES[view].figures(source, options)
